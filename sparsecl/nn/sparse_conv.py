"""SparseConv2d: a conv2d layer whose weight [out, in, kh, kw] is stored and computed sparsely.

structure="unstructured": values [nnz] over ``weight.reshape(out, -1)`` in a CSRLayout, computed by
``ops.csr_conv2d``; DST granularity 1 (dst_mask is [out, in*kh*kw]).
structure="block": blocks of B output x B input channels with all taps kept together, values
[nnzb, B, B, kh, kw] in a BlockSparseLayout over [out, in], computed by ``ops.bsr_conv2d``; DST
granularity B (dst_mask is the channel block grid).
groups=1 only: depthwise/grouped convs stay dense nn.Conv2d.
Each pass (forward, dX, dValues) runs sparse or densely on the effective weight, as ``sparsecl.dispatch`` decides
(``layer.dispatch`` overrides, ``layer.dispatch_choice`` reads the last choice); results and gradients are the same.
"""
import math

import torch
from torch import nn

from ..dispatch import DispatchMixin
from ..formats import BlockSparseLayout, CSRLayout, repack_values_
from ..ops import bsr_conv2d, csr_conv2d
from ..ops.dense_or_sparse import bsr_conv2d_spec, csr_conv2d_spec
from .sparse_linear import topk_mask

STRUCTURES = ("unstructured", "block")
_INDEX_BUFFERS = ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm")
_SAVED_BUFFERS = ("row_ptr", "col_idx")


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)


class SparseConv2d(DispatchMixin, nn.Module):
    """conv2d with a sparse weight. ``mask``: bool [out, in*kh*kw] (unstructured) or the block grid
    [ceil(out/B), ceil(in/B)] (block); without it a random topology of ``density``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 density=0.1, structure="unstructured", block_size=32, *, mask=None, device=None, dtype=None):
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.structure, self.block_size = structure, int(block_size) if structure == "block" else 1
        kh, kw = self.kernel_size
        factory = dict(device=device, dtype=dtype)
        if structure == "unstructured":
            shape = (self.out_channels, self.in_channels * kh * kw)
            layout = (CSRLayout.random(shape, density, device=device) if mask is None
                      else CSRLayout.from_mask(self._check_mask(mask, shape, device)))
            self._set_layout(layout)
            self.values = nn.Parameter(torch.empty(layout.nnz, **factory))
        else:
            shape = (self.out_channels, self.in_channels)
            if mask is None:
                layout = BlockSparseLayout.random(shape, density, self.block_size, device=device)
            else:
                grid = (math.ceil(shape[0] / self.block_size), math.ceil(shape[1] / self.block_size))
                layout = BlockSparseLayout.from_block_mask(self._check_mask(mask, grid, device), shape,
                                                           self.block_size)
            self._set_layout(layout)
            B = self.block_size
            self.values = nn.Parameter(torch.empty(layout.nnzb, B, B, kh, kw, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory)) if bias else None
        self.reset_parameters()

    @staticmethod
    def _check_mask(mask, shape, device):
        mask = torch.as_tensor(mask, device=device)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
            raise ValueError(f"mask must be bool {tuple(shape)}, got {mask.dtype} {tuple(mask.shape)}")
        return mask

    # storage ---------------------------------------------------------------------------------
    def _set_layout(self, layout):
        for name, t in layout.index_tensors().items():
            self.register_buffer(name, t, persistent=name in _SAVED_BUFFERS)

    def _index(self):
        return [getattr(self, n) for n in _INDEX_BUFFERS]

    @property
    def layout(self):
        """CSRLayout over [out, in*kh*kw] (unstructured) or BlockSparseLayout over [out, in] (block)."""
        t = self._index()
        if self.structure == "unstructured":
            kh, kw = self.kernel_size
            return CSRLayout(t[0], t[1], (self.out_channels, self.in_channels * kh * kw), validate=False,
                             _derived=tuple(t[2:]))
        return BlockSparseLayout(t[0], t[1], (self.out_channels, self.in_channels), self.block_size,
                                 validate=False, _derived=tuple(t[2:]))

    @property
    def sparse_parameter(self):
        return self.values

    @property
    def dst_block_size(self):
        return self.block_size

    def reset_parameters(self):
        # nn.Conv2d's default init bound, 1/sqrt(fan_in)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        with torch.no_grad():
            self.values.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    # compute ---------------------------------------------------------------------------------
    def forward(self, x):
        layout = self.layout
        geom = (self.stride, self.padding, self.dilation)
        if self.structure == "unstructured":
            total = layout.shape[0] * layout.shape[1]
            density = layout.nnz / total if total else 0.0
            return self.dispatcher(
                x, self.values, self.bias, lambda: csr_conv2d_spec(x, layout, self.kernel_size, *geom), density,
                lambda: csr_conv2d(x, self.values, layout, self.kernel_size, self.bias, *geom))
        return self.dispatcher(
            x, self.values, self.bias, lambda: bsr_conv2d_spec(x, layout, self.kernel_size, *geom), layout.density,
            lambda: bsr_conv2d(x, self.values, layout, self.bias, *geom))

    def dense_weight(self):
        """The effective dense weight [out, in, kh, kw] (differentiable in values)."""
        kh, kw = self.kernel_size
        if self.structure == "unstructured":
            return self.layout.to_dense(self.values).view(self.out_channels, self.in_channels, kh, kw)
        layout, B = self.layout, self.block_size
        nbr, nbc = layout.n_block_rows, layout.n_block_cols
        full = self.values.new_zeros(nbr, B, nbc, B, kh, kw)
        full[layout.row_idx.long(), :, layout.col_idx.long()] = self.values
        return full.reshape(nbr * B, nbc * B, kh, kw)[: self.out_channels, : self.in_channels]

    def mask(self):
        """Bool [out, in, kh, kw]: True where the weight is active."""
        kh, kw = self.kernel_size
        if self.structure == "unstructured":
            return self.layout.mask().view(self.out_channels, self.in_channels, kh, kw)
        return self.layout.mask()[:, :, None, None].expand(-1, -1, kh, kw).clone()

    def dst_mask(self):
        """Bool topology at DST granularity: [out, in*kh*kw] or the channel block grid."""
        if self.structure == "unstructured":
            return self.layout.mask()
        return self.layout.block_mask()

    @property
    def density(self):
        total = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return int(self.mask().sum()) / total if total else 0.0

    # DST protocol ------------------------------------------------------------------------------
    @torch.no_grad()
    def set_topology(self, new_mask):
        """Repack to ``new_mask`` (dst_mask's shape, same active count): kept entries keep their values
        bit-identically, new ones are 0; ``values`` stays the same Parameter. Returns src (int64, one entry per
        row of the new values: per nonzero, or per block): its index in the old values, or -1 if new."""
        dev = self.values.device
        if self.structure == "unstructured":
            layout = self.layout
            new_mask = self._check_mask(new_mask, layout.shape, dev)
            if int(new_mask.count_nonzero()) != layout.nnz:
                raise ValueError(f"new_mask has {int(new_mask.sum())} active entries, the layer has {layout.nnz}")
            new_layout, src = layout.with_topology(new_mask)
            self._set_layout(new_layout)
        else:
            # the block grid's topology is a CSR over the grid: reuse its incremental merge
            layout = self.layout
            grid = (layout.n_block_rows, layout.n_block_cols)
            new_mask = self._check_mask(new_mask, grid, dev)
            if int(new_mask.count_nonzero()) != layout.nnzb:
                raise ValueError(f"new_mask has {int(new_mask.sum())} active blocks, the layer has {layout.nnzb}")
            grid_layout, src = CSRLayout(layout.row_ptr, layout.col_idx, grid, validate=False).with_topology(new_mask)
            self._set_layout(BlockSparseLayout(grid_layout.row_ptr, grid_layout.col_idx, layout.shape,
                                               self.block_size, validate=False))
        return repack_values_(self.values, src.to(dev))

    # construction / serialisation ---------------------------------------------------------------
    @classmethod
    def from_dense(cls, conv, density=None, mask=None, structure="unstructured", block_size=32):
        """Convert an ``nn.Conv2d`` (groups=1, zero padding) keeping its weights: those in ``mask`` (dst_mask
        shape) or the largest-magnitude ones (blocks ranked by sum of |w|) up to ``density``."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d needs groups=1, padding_mode='zeros' and numeric padding")
        if (density is None) == (mask is None):
            raise ValueError("give exactly one of density= or mask=")
        w = conv.weight.detach()
        out_c, in_c, kh, kw = w.shape
        if mask is None:
            if structure == "block":
                B = block_size
                grid = (math.ceil(out_c / B), math.ceil(in_c / B))
                padded = w.new_zeros(grid[0] * B, grid[1] * B)
                padded[:out_c, :in_c] = w.abs().sum((2, 3))
                score = padded.view(grid[0], B, grid[1], B).sum((1, 3))
                mask = topk_mask(score, density)
            else:
                mask = topk_mask(w.reshape(out_c, -1), density)
        mod = cls(in_c, out_c, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=conv.bias is not None,
                  structure=structure, block_size=block_size, mask=mask.to(w.device), device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layout = mod.layout
            if structure == "block":
                B = block_size
                nbr, nbc = layout.n_block_rows, layout.n_block_cols
                padded = w.new_zeros(nbr * B, nbc * B, kh, kw)
                padded[:out_c, :in_c] = w
                mod.values.copy_(padded.view(nbr, B, nbc, B, kh, kw)[layout.row_idx.long(), :, layout.col_idx.long()])
            else:
                mod.values.copy_(layout.values_from_dense(w.reshape(out_c, -1)))
            if conv.bias is not None:
                mod.bias.copy_(conv.bias)
        return mod

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        keys = [prefix + n for n in _SAVED_BUFFERS]
        if all(k in state_dict for k in keys):
            try:
                if self.structure == "unstructured":
                    layout = CSRLayout(state_dict[keys[0]], state_dict[keys[1]], self.layout.shape)
                else:
                    layout = BlockSparseLayout(state_dict[keys[0]], state_dict[keys[1]], self.layout.shape,
                                               self.block_size)
            except ValueError as exc:
                errors.append(f"{prefix}: invalid saved layout: {exc}")
                return
            self._set_layout(layout.to(self.values.device))
            n = layout.nnz if self.structure == "unstructured" else layout.nnzb
            if self.values.shape[0] != n:
                self.values = nn.Parameter(self.values.new_empty(n, *self.values.shape[1:]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"structure={self.structure}, block_size={self.block_size}, density={self.density:.3f}")

