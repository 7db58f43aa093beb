"""A test-only element-granular layer implementing the DST layer protocol with masked dense storage."""
import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Module):
    """y = x @ (weight * mask).T + bias; gradients outside the mask are masked out by the product."""

    def __init__(self, in_features, out_features, density=0.5, generator=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features, generator=generator) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        n = out_features * in_features
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[: round(density * n)]] = True
        self.register_buffer("mask", mask.view(out_features, in_features))
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)

    dst_block_size = 1

    def dst_mask(self):
        return self.mask.clone()

    def dense_weight(self):
        return self.weight * self.mask

    @property
    def sparse_parameter(self):
        return self.weight

    @torch.no_grad()
    def set_topology(self, new_mask):
        changed = (new_mask != self.mask).flatten()
        self.weight.masked_fill_(~new_mask | (new_mask & ~self.mask), 0)
        self.mask.copy_(new_mask)
        src = torch.arange(self.weight.numel())
        return torch.where(changed, -1, src)
