"""BlockSparseLinear: a linear layer that stores and computes only its active B x B weight blocks.

Each pass (forward, dX, dValues) runs sparse or densely on the effective weight, as ``sparsecl.dispatch`` decides
(``layer.dispatch`` overrides, ``layer.dispatch_choice`` reads the last choice); results and gradients are the same.
"""
import math

import torch
from torch import nn

from ..dispatch import DispatchMixin
from ..formats import BlockSparseLayout, _transpose_index, block_reduce, repack_values_
from ..ops import bsr_linear
from ..ops.dense_or_sparse import bsr_linear_spec

_INDEX_BUFFERS = ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm")
_SAVED_BUFFERS = ("row_ptr", "col_idx")


class BlockSparseLinear(DispatchMixin, nn.Module):
    """``y = x @ W.T + b`` with W [out, in] held as ``values`` [nnzb, B, B] plus a BSR layout.

    Parameters: ``values`` (and ``bias``). The layout's index tensors are buffers, so state_dict
    round-trips the topology. Parameter memory scales with the number of active blocks.
    """

    def __init__(self, in_features, out_features, bias=True, density=1.0, block_size=32, *, layout=None,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if layout is None:
            layout = BlockSparseLayout.random((out_features, in_features), density, block_size, device=device)
        elif layout.shape != (out_features, in_features):
            raise ValueError(f"layout shape {layout.shape} != ({out_features}, {in_features})")
        self.block_size = layout.block_size
        self._set_layout(layout.to(device) if device is not None else layout)
        B = self.block_size
        self.values = nn.Parameter(torch.empty(layout.nnzb, B, B, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.dense_grad_hook = None  # DST protocol: set by the engine on growth steps (see ops.bsr_linear)
        self.reset_parameters()

    def _set_layout(self, layout):
        # only row_ptr/col_idx are saved; the derived (transposed) index is rebuilt on load
        for name, t in layout.index_tensors().items():
            self.register_buffer(name, t, persistent=name in _SAVED_BUFFERS)

    @property
    def layout(self):
        """The current BlockSparseLayout (a view over this module's index buffers)."""
        t = [getattr(self, n) for n in _INDEX_BUFFERS]
        return BlockSparseLayout(t[0], t[1], (self.out_features, self.in_features), self.block_size,
                                 _derived=tuple(t[2:]), validate=False)

    def reset_parameters(self):
        # same distribution as nn.Linear: U(-1/sqrt(in), 1/sqrt(in)); edge padding kept at zero
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        with torch.no_grad():
            self.values.uniform_(-bound, bound)
            self.values.mul_(self._block_entry_mask())
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def _block_entry_mask(self):
        """[nnzb, B, B] mask of block entries inside the weight (edge blocks are clipped)."""
        layout = self.layout
        ones = torch.ones(layout.shape, device=self.values.device, dtype=self.values.dtype)
        return layout.values_from_dense(ones)

    def forward(self, x):
        layout, hook = self.layout, self.dense_grad_hook
        return self.dispatcher(x, self.values, self.bias, lambda: bsr_linear_spec(layout), layout.density,
                               lambda: bsr_linear(x, self.values, layout, self.bias, dense_grad_hook=hook), hook)

    def dense_weight(self):
        """The effective dense weight [out, in] (differentiable in ``values``)."""
        return self.layout.to_dense(self.values)

    def mask(self):
        """Bool [out, in]: True where the weight is active."""
        return self.layout.mask()

    @property
    def density(self):
        return self.layout.density

    @classmethod
    def from_dense(cls, linear, density=None, block_mask=None, block_size=32):
        """Convert an ``nn.Linear`` keeping its weights: either the blocks in ``block_mask``, or the
        round(density * n_blocks) blocks of largest L2 norm."""
        w = linear.weight.detach()
        if (density is None) == (block_mask is None):
            raise ValueError("give exactly one of density= or block_mask=")
        if block_mask is None:
            if not 0.0 <= density <= 1.0:
                raise ValueError(f"density must be in [0, 1], got {density}")
            norms = block_reduce(w.float() ** 2, block_size, "sum")
            k = round(density * norms.numel())
            block_mask = torch.zeros(norms.numel(), dtype=torch.bool, device=w.device)
            block_mask[torch.topk(norms.flatten(), k, sorted=False).indices] = True
            block_mask = block_mask.view(norms.shape)
        layout = BlockSparseLayout.from_block_mask(block_mask.to(w.device), tuple(w.shape), block_size)
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, layout=layout,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            mod.values.copy_(layout.values_from_dense(w))
            if linear.bias is not None:
                mod.bias.copy_(linear.bias)
        return mod

    # DST layer protocol (sparsecl.dst): topology at block granularity ------------------------------
    @property
    def dst_block_size(self):
        return self.block_size

    def dst_mask(self):
        """Bool [ceil(out/B), ceil(in/B)]: the active blocks."""
        return self.layout.block_mask()

    @property
    def sparse_parameter(self):
        return self.values

    @torch.no_grad()
    def set_topology(self, new_mask):
        """Repack to the active blocks of ``new_mask`` (bool block grid): kept blocks keep their values
        bit-identically, new blocks are zero. The kept (sorted) and new (sorted) block lists are merged
        per block row, then the transposed index is rebuilt vectorised. ``values`` stays the same
        Parameter object. Returns src (int64 [new nnzb]): each new block's index in the old ``values``, or -1
        for new blocks."""
        layout = self.layout
        grid = (layout.n_block_rows, layout.n_block_cols)
        if not isinstance(new_mask, torch.Tensor) or new_mask.dtype != torch.bool or tuple(new_mask.shape) != grid:
            raise ValueError(f"new_mask must be a bool tensor of the block grid {grid}, got "
                             f"{getattr(new_mask, 'dtype', type(new_mask).__name__)} {tuple(getattr(new_mask, 'shape', ()))}")
        dev = self.values.device
        new_mask = new_mask.to(dev)
        nbc = max(grid[1], 1)
        old_keys = layout.row_idx.long() * nbc + layout.col_idx.long()  # row-major sorted
        keep = new_mask.view(-1)[old_keys]
        kept_keys, kept_src = old_keys[keep], keep.nonzero().view(-1)
        old_mask = torch.zeros(grid[0] * grid[1], dtype=torch.bool, device=dev)
        old_mask[old_keys] = True
        grown_keys = (new_mask.view(-1) & ~old_mask).nonzero().view(-1)  # row-major sorted
        # merge two sorted key lists: each element's output slot = own rank + rank among the other list
        n_new = kept_keys.numel() + grown_keys.numel()
        kept_pos = torch.arange(kept_keys.numel(), device=dev) + torch.searchsorted(grown_keys, kept_keys)
        grown_pos = torch.arange(grown_keys.numel(), device=dev) + torch.searchsorted(kept_keys, grown_keys)
        keys = torch.empty(n_new, dtype=torch.long, device=dev)
        keys[kept_pos], keys[grown_pos] = kept_keys, grown_keys
        rows, cols = keys // nbc, keys % nbc
        row_ptr = torch.zeros(grid[0] + 1, dtype=torch.int32, device=dev)
        row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=grid[0]), 0)
        col_idx = cols.to(torch.int32)
        self._set_layout(BlockSparseLayout(row_ptr, col_idx, layout.shape, self.block_size, validate=False,
                                           _derived=_transpose_index(row_ptr, col_idx, grid[1])))
        src_block = torch.full((n_new,), -1, dtype=torch.long, device=dev)
        src_block[kept_pos] = kept_src
        return repack_values_(self.values, src_block)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # the topology may differ from this module's: adopt (and validate) the saved layout first
        keys = [prefix + n for n in _SAVED_BUFFERS]
        if all(k in state_dict for k in keys):
            try:
                layout = BlockSparseLayout(state_dict[keys[0]], state_dict[keys[1]],
                                           (self.out_features, self.in_features), self.block_size)
            except ValueError as exc:
                errors.append(f"{prefix}: invalid saved layout: {exc}")
                return
            self._set_layout(layout.to(self.values.device))
            if self.values.shape[0] != layout.nnzb:
                B = self.block_size
                self.values = nn.Parameter(self.values.new_empty(layout.nnzb, B, B))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}, density={self.density:.3f}")
