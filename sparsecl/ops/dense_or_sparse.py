"""dense_or_sparse: one sparse layer's passes (forward, dX, dValues), each computed either by the layer's sparse
kernels or densely on its effective weight, with the same result and the same gradient contract.

This module is the mechanism; which direction goes dense is the policy of ``sparsecl.dispatch`` (measured once per
machine and layer geometry). Pieces:

* ``DispatchSpec``: what one layer call computes. ``forward(x, values, bias)``, ``dx(grad_out, values, x_shape)``
  and ``dw(grad_out, x) -> dValues`` (the sparse kernel triple); ``geometry``, its dense twin (``LinearGeometry``
  or ``Conv2dGeometry``: dense forward, dX and dense dW on a weight of ``geometry.weight_shape``); ``index``, the
  ``ActiveIndex`` of the values (where dValues is gathered from a dense dW); ``signature``, a string naming the
  layer's shape for the calibration cache. Factories for the sparsecl ops: ``csr_linear_spec``,
  ``bsr_linear_spec``, ``csr_conv2d_spec``, ``bsr_conv2d_spec``.
* ``DenseWeight``: a persistent dense copy of the effective weight. ``refresh(parts)`` keeps it in step with the
  values incrementally: an O(nnz) scatter of the values where they differ from the buffer's entries (after an
  optimizer step; found by an O(nnz) comparison, not by version counters, which writes through ``.data`` do not
  move), and, when an index changed (a topology change: set_topology, load_state_dict), zeros written at the old
  positions first. The buffer is never zero-filled or rebuilt per step. ``parts`` is a list of (values,
  ActiveIndex) with disjoint positions, so a frozen + trainable union is two parts of one buffer.
* ``dense_or_sparse(x, values, bias, spec, choice, dense_weight=None, dense_grad_hook=None)``: the autograd op.
  ``choice`` is a ``Choice(forward, dx, dw)`` of "sparse" | "dense"; ``dense_weight()`` returns the refreshed dense
  weight (``DenseWeight.refresh``) whenever forward or dx is "dense". Gradients: dX for x, dValues shaped like ``values`` (only the active
  positions exist), dBias. A dense dW direction computes the dense gradient GEMM (or conv weight gradient) and
  gathers it at the active positions; ``dense_grad_hook`` (DST growth steps) receives that dense dW as a 2-D
  [rows, cols] tensor, as with the sparse ops.
* ``candidates(spec, x, values, bias, weight)``: {direction: (sparse_fn, dense_fn)} closures for calibration.

How another layer plugs in (e.g. a frozen + trainable union layer): write a ``DispatchSpec`` whose forward/dx/dw run
its kernels (the union kernels) and whose ``index`` is where its trainable values sit in the dense weight; inherit
``sparsecl.dispatch.DispatchMixin`` (one ``Dispatcher`` per layer, which owns the ``DenseWeight``); in forward
return ``self.dispatcher(x, values, bias, make_spec, density, sparse_call, dense_grad_hook, extra_parts)``:
``make_spec()`` builds the spec, ``sparse_call()`` is the layer's usual sparse call (run when every direction is
sparse), ``extra_parts`` lists the other (values, ActiveIndex) of the dense weight that get no gradient (the frozen
values). ``sparsecl/nn/sparse_conv.py`` is a complete user.
"""
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..formats import entries_at
from ._registry import autocast_args, check_dense_grad_hook
from .bsr_linear import _kernels as _bsr_linear_kernels
from .csr_linear import _kernels as _csr_linear_kernels
from .sparse_conv2d import _bsr_kernels as _bsr_conv_kernels
from .sparse_conv2d import _check_common, _idx
from .sparse_conv2d import _csr_kernels as _csr_conv_kernels

DIRECTIONS = ("forward", "dx", "dw")


class Choice(NamedTuple):
    """Per direction "sparse" or "dense"."""
    forward: str = "sparse"
    dx: str = "sparse"
    dw: str = "sparse"

    @property
    def all_sparse(self):
        return self.forward == self.dx == self.dw == "sparse"

    @property
    def needs_weight(self):
        return self.forward == "dense" or self.dx == "dense"


class ActiveIndex(NamedTuple):
    """Positions of a values tensor in the [rows, cols] matrix view of a weight: element (block_size 1,
    values [nnz]) or B x B blocks (values [nnzb, B, B, *tail]); row_idx/col_idx int32 [nnz] (block rows/cols)."""
    row_idx: torch.Tensor
    col_idx: torch.Tensor
    block_size: int = 1


class LinearGeometry(NamedTuple):
    """Dense twin of ``x @ W.T + b``, W [out, in]; x is [T, in] here (leading dims flattened by the op)."""
    out_features: int
    in_features: int

    @property
    def weight_shape(self):
        return (self.out_features, self.in_features)

    @property
    def matrix(self):
        """(rows, cols, tail): the weight as [rows, cols, *tail] for the ActiveIndex."""
        return self.out_features, self.in_features, ()

    def check(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} input features but the layer expects {self.in_features}")

    def forward(self, x, w, bias):
        return F.linear(x, w, bias)

    def dx(self, grad_out, w, x_shape):
        return grad_out.mm(w)

    def dweight(self, grad_out, x):
        return grad_out.T.mm(x)

    def dbias(self, grad_out):
        return grad_out.sum(0)


class Conv2dGeometry(NamedTuple):
    """Dense twin of conv2d (groups=1). ``blocked``: the ActiveIndex is over channel blocks [out, in] with the
    kh*kw taps as tail (block-channel values); otherwise over [out, in*kh*kw] elements."""
    out_channels: int
    in_channels: int
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    blocked: bool = False

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def matrix(self):
        kh, kw = self.kernel_size
        if self.blocked:
            return self.out_channels, self.in_channels, (kh, kw)
        return self.out_channels, self.in_channels * kh * kw, ()

    def check(self, x):
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the layer expects {self.in_channels}")

    def forward(self, x, w, bias):
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation)

    def dx(self, grad_out, w, x_shape):
        return torch.nn.grad.conv2d_input(list(x_shape), w, grad_out, self.stride, self.padding, self.dilation)

    def dweight(self, grad_out, x):
        return torch.nn.grad.conv2d_weight(x, list(self.weight_shape), grad_out, self.stride, self.padding,
                                           self.dilation)

    def dbias(self, grad_out):
        return grad_out.sum((0, 2, 3))


class DispatchSpec(NamedTuple):
    """One layer call: its sparse kernel triple, dense twin, active index and cache signature (see module doc)."""
    signature: str
    geometry: object
    index: ActiveIndex
    forward: Callable
    dx: Callable
    dw: Callable


# positions in the padded [rows, cols, *tail] matrix ---------------------------------------------------------------
def _padded_shape(geometry, block_size):
    rows, cols, tail = geometry.matrix
    B = block_size
    return (math.ceil(rows / B) * B, math.ceil(cols / B) * B, *tail)


def _positions(index, padded):
    """What a scatter into the padded buffer needs: flat int64 keys (elements), or (block rows, block cols)."""
    if index.block_size == 1:
        return torch.add(index.col_idx, index.row_idx.long(), alpha=padded[1])  # a new tensor
    return index.row_idx.long().clone(), index.col_idx.long().clone()


def _scatter_(buffer, positions, block_size, values):
    """Write ``values`` (a tensor, or 0) at ``positions`` of the padded buffer, in place."""
    if block_size == 1:
        flat = buffer.view(-1)
        if isinstance(values, torch.Tensor):
            flat.index_copy_(0, positions, values.reshape(-1))
        else:
            flat.index_fill_(0, positions, values)
        return
    B = block_size
    blocks = buffer.view(buffer.shape[0] // B, B, buffer.shape[1] // B, B, *buffer.shape[2:])
    blocks[positions[0], :, positions[1]] = values


def _gather(buffer, positions, block_size):
    """The entries of the padded buffer at ``positions`` (the inverse of ``_scatter_``)."""
    if block_size == 1:
        return buffer.view(-1).index_select(0, positions)
    B = block_size
    return buffer.view(buffer.shape[0] // B, B, buffer.shape[1] // B, B, *buffer.shape[2:])[positions[0], :,
                                                                                           positions[1]]


def gather_active(dense, geometry, index):
    """dValues from a dense weight gradient of ``geometry.weight_shape``: its entries at ``index``."""
    rows, cols, tail = geometry.matrix
    dense = dense.reshape(rows, cols, *tail)
    B = index.block_size
    if not tail:
        return entries_at(dense, index.row_idx, index.col_idx, B)
    padded = _padded_shape(geometry, B)
    if tuple(dense.shape) != padded:
        full = dense.new_zeros(padded)
        full[:rows, :cols] = dense
        dense = full
    return dense.view(padded[0] // B, B, padded[1] // B, B, *tail)[index.row_idx.long(), :, index.col_idx.long()]


class _Part:
    """Bookkeeping of one (values, ActiveIndex) part of a DenseWeight: the index tensors it was scattered from (and
    their versions) and its positions (a private copy, so later in-place index edits cannot misdirect the zeroing)."""

    def __init__(self, index, positions):
        self.index = index
        self.index_versions = tuple(t._version for t in index[:2])
        self.positions = positions

    def index_matches(self, index):
        return (index.block_size == self.index.block_size and index.row_idx is self.index.row_idx
                and index.col_idx is self.index.col_idx
                and tuple(t._version for t in index[:2]) == self.index_versions)


class DenseWeight:
    """The effective dense weight of one layer, kept in a persistent buffer and refreshed incrementally (see the
    module docstring). Not a module buffer: it is not saved, and it follows the values' device and dtype."""

    def __init__(self, geometry):
        self.geometry = geometry
        self.buffer = None
        self._parts = []

    def refresh(self, parts):
        """The dense weight [geometry.weight_shape] of ``parts`` (a list of (values, ActiveIndex), disjoint
        positions), updated in place where the values or the index changed since the last call."""
        values0 = parts[0][0]
        padded = _padded_shape(self.geometry, parts[0][1].block_size)
        if (self.buffer is None or self.buffer.dtype != values0.dtype or self.buffer.device != values0.device
                or tuple(self.buffer.shape) != padded or len(self._parts) != len(parts)):
            self.buffer = values0.new_zeros(padded)  # once per layer (or per device/dtype move)
            self._parts = [None] * len(parts)
        with torch.no_grad():
            moved = [st is None or not st.index_matches(idx) for st, (_, idx) in zip(self._parts, parts)]
            if any(moved):
                for st, m in zip(self._parts, moved):
                    if m and st is not None:
                        _scatter_(self.buffer, st.positions, st.index.block_size, 0)
                self._parts = [_Part(idx, _positions(idx, padded)) if m else st
                               for st, m, (_, idx) in zip(self._parts, moved, parts)]
            for st, (values, _) in zip(self._parts, parts):
                # after a topology change every part is rewritten: zeroing one part's old positions may have
                # cleared positions another part owns now (a trainable entry that became frozen). Otherwise the
                # values are compared with the buffer (not trusted to their version counter, which writes through
                # .data, as gradcheck's, do not move) and written only if they differ, so a buffer that an earlier
                # forward saved for its backward is not bumped by a second forward of the same weights.
                values = values.detach()
                if any(moved) or not torch.equal(_gather(self.buffer, st.positions, st.index.block_size),
                                                 values.reshape(-1) if st.index.block_size == 1 else values):
                    _scatter_(self.buffer, st.positions, st.index.block_size, values)
        rows, cols, _ = self.geometry.matrix
        view = self.buffer if tuple(self.buffer.shape[:2]) == (rows, cols) else self.buffer[:rows, :cols]
        return view.reshape(self.geometry.weight_shape)


# the autograd op ------------------------------------------------------------------------------------------------
def _weight_for(dense_weight, x):
    w = dense_weight()
    return w if w.dtype == x.dtype else w.to(x.dtype)  # autocast


class _DenseOrSparse(torch.autograd.Function):
    # ctx-style forward: apply() then skips the per-call signature binding of the setup_context style
    @staticmethod
    def forward(ctx, x, values, bias, spec, choice, dense_weight, dense_grad_hook):
        ctx.spec, ctx.choice, ctx.dense_grad_hook = spec, choice, dense_grad_hook
        ctx.dense_weight = dense_weight
        ctx.has_bias, ctx.x_shape = bias is not None, tuple(x.shape)
        ctx.save_for_backward(x, values)
        if choice.forward == "dense":
            return spec.geometry.forward(x, _weight_for(dense_weight, x), bias)
        return spec.forward(x, values, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, values = ctx.saved_tensors
        spec, choice, geometry = ctx.spec, ctx.choice, ctx.spec.geometry
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            if choice.dx == "dense":
                # refreshed again (an O(nnz) comparison when nothing changed): other forwards of the same layer
                # may have rewritten the shared buffer since this one (gradient accumulation, gradcheck)
                dx = geometry.dx(grad_out, _weight_for(ctx.dense_weight, grad_out), ctx.x_shape)
            else:
                dx = spec.dx(grad_out, values, ctx.x_shape)
        if ctx.needs_input_grad[1] or ctx.dense_grad_hook is not None:
            if choice.dw == "dense" or ctx.dense_grad_hook is not None:
                dense = geometry.dweight(grad_out, x)
                if ctx.dense_grad_hook is not None:
                    ctx.dense_grad_hook(dense.reshape(geometry.matrix[0], -1))
                if ctx.needs_input_grad[1]:
                    dv = gather_active(dense, geometry, spec.index).to(values.dtype)
            else:
                dv = spec.dw(grad_out, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = geometry.dbias(grad_out)
        return dx, dv, db, None, None, None, None


def dense_or_sparse(x, values, bias, spec, choice, dense_weight=None, dense_grad_hook=None):
    """The layer call described by ``spec``, each direction on the path ``choice`` names.

    x: the layer input (linear: [..., in], conv: [N, C, H, W]); values: the layer's sparse values (only they get a
    gradient, shaped like them); bias or None; dense_weight: a callable returning the dense effective weight in
    step with ``values`` (``lambda: dense.refresh(parts)`` of a ``DenseWeight``), required when choice.forward or
    choice.dx is "dense"; it is called in forward and again in backward. Returns what the sparse op returns.
    Nothing is mutated apart from the DenseWeight buffer.
    """
    spec.geometry.check(x)
    if choice.needs_weight and dense_weight is None:
        raise ValueError("choice has a dense forward or dx: pass dense_weight, e.g. lambda: DenseWeight.refresh(parts)")
    check_dense_grad_hook(dense_grad_hook)
    x, values, bias = autocast_args(x, values, bias)
    if isinstance(spec.geometry, LinearGeometry):
        lead = x.shape[:-1]
        y = _DenseOrSparse.apply(x.reshape(lead.numel(), x.shape[-1]), values, bias, spec, choice, dense_weight,
                                 dense_grad_hook)
        return y.reshape(*lead, y.shape[-1])
    return _DenseOrSparse.apply(x, values, bias, spec, choice, dense_weight, dense_grad_hook)


def candidates(spec, x, values, bias, weight):
    """{direction: (sparse_fn, dense_fn)}: zero-argument closures timing each pass both ways on these inputs
    (no autograd; the dense dw includes the gather at the active positions)."""
    x = x.detach()
    if isinstance(spec.geometry, LinearGeometry):
        x = x.reshape(-1, x.shape[-1])
    values, geometry = values.detach(), spec.geometry
    bias = bias.detach() if bias is not None else None
    with torch.no_grad():
        y = spec.forward(x, values, bias)
    grad_out = torch.randn_like(y)
    shape = tuple(x.shape)
    return {
        "forward": (lambda: spec.forward(x, values, bias), lambda: geometry.forward(x, weight, bias)),
        "dx": (lambda: spec.dx(grad_out, values, shape), lambda: geometry.dx(grad_out, weight, shape)),
        "dw": (lambda: spec.dw(grad_out, x),
               lambda: gather_active(geometry.dweight(grad_out, x), geometry, spec.index)),
    }


# specs of the sparsecl ops ----------------------------------------------------------------------------------------
def _linear_spec(kind, kernels, layout, block_size):
    out_f, in_f = layout.shape
    idx = _idx(layout)
    extra = (block_size,) if block_size > 1 else ()

    def forward(x, values, bias):
        return kernels(x.device)[0](x, values, idx[0], idx[1], out_f, bias)

    def dx(grad_out, values, x_shape):
        return kernels(grad_out.device)[1](grad_out.contiguous(), values, idx[3], idx[4], idx[5], in_f)

    def dw(grad_out, x):
        return kernels(x.device)[2](grad_out.contiguous(), x, idx[2], idx[1], *extra)

    return DispatchSpec(f"{kind}|{out_f}x{in_f}|B{block_size}", LinearGeometry(out_f, in_f),
                        ActiveIndex(layout.row_idx, layout.col_idx, block_size), forward, dx, dw)


def csr_linear_spec(layout):
    """DispatchSpec of ``csr_linear(x, values, layout, bias)``."""
    return _linear_spec("csr_linear", _csr_linear_kernels, layout, 1)


def bsr_linear_spec(layout):
    """DispatchSpec of ``bsr_linear(x, values, layout, bias)``."""
    return _linear_spec("bsr_linear", _bsr_linear_kernels, layout, layout.block_size)


def _conv_geometry(x, layout, in_channels, kernel_size, stride, padding, dilation, blocked):
    geom = _check_common(x, torch.empty(0, device=x.device), layout, in_channels, stride, padding, dilation)
    out_c = layout.shape[0]
    return geom, Conv2dGeometry(out_c, in_channels, tuple(kernel_size), *(tuple(g) for g in geom), blocked=blocked)


def csr_conv2d_spec(x, layout, kernel_size, stride=1, padding=0, dilation=1):
    """DispatchSpec of ``csr_conv2d(x, values, layout, kernel_size, bias, stride, padding, dilation)``."""
    kh, kw = kernel_size
    geom, geometry = _conv_geometry(x, layout, layout.shape[1] // (kh * kw), (kh, kw), stride, padding, dilation,
                                    False)
    idx, ks = _idx(layout), [kh, kw]

    def forward(x, values, bias):
        return _csr_conv_kernels(x.device)[0](x, values, idx[0], idx[1], geometry.out_channels, ks, bias, *geom)

    def dx(grad_out, values, x_shape):
        return _csr_conv_kernels(grad_out.device)[1](grad_out, values, idx[3], idx[4], idx[5], list(x_shape), ks,
                                                     *geom)

    def dw(grad_out, x):
        return _csr_conv_kernels(x.device)[2](grad_out, x, idx[2], idx[1], ks, *geom)

    return DispatchSpec(_conv_signature("csr_conv2d", geometry, 1), geometry,
                        ActiveIndex(layout.row_idx, layout.col_idx, 1), forward, dx, dw)


def bsr_conv2d_spec(x, layout, kernel_size, stride=1, padding=0, dilation=1):
    """DispatchSpec of ``bsr_conv2d(x, values, layout, bias, stride, padding, dilation)``; values
    [nnzb, B, B, kh, kw]."""
    geom, geometry = _conv_geometry(x, layout, layout.shape[1], kernel_size, stride, padding, dilation, True)
    idx, B = _idx(layout), layout.block_size

    def forward(x, values, bias):
        return _bsr_conv_kernels(x.device)[0](x, values, idx[0], idx[1], geometry.out_channels, bias, *geom)

    def dx(grad_out, values, x_shape):
        return _bsr_conv_kernels(grad_out.device)[1](grad_out, values, idx[3], idx[4], idx[5], list(x_shape), *geom)

    def dw(grad_out, x):
        return _bsr_conv_kernels(x.device)[2](grad_out, x, idx[2], idx[1], B, list(kernel_size), *geom)

    return DispatchSpec(_conv_signature("bsr_conv2d", geometry, B), geometry,
                        ActiveIndex(layout.row_idx, layout.col_idx, B), forward, dx, dw)


def _conv_signature(kind, g, block_size):
    def p(t):
        return "x".join(map(str, t))
    return (f"{kind}|{g.out_channels}x{g.in_channels}|k{p(g.kernel_size)}|s{p(g.stride)}|p{p(g.padding)}"
            f"|d{p(g.dilation)}|B{block_size}")
