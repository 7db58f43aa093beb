"""Trunk layers of the continual models: the layers the trainer freezes by ownership and DST updates.

Layers (``mode``):
  * ``"sparse"``: ``SparseTrunkLinear`` / ``SparseTrunkConv2d`` (groups=1): earlier tasks' weights as frozen
    CSR values + index in buffers (no gradient, no optimizer state), and ``inner``, a csr ``SparseLinear`` /
    unstructured ``SparseConv2d`` holding the current task's trainable weights (the only module the DST
    engine sees; its mask never contains a frozen position). Each pass is ONE ``union_linear`` /
    ``union_conv2d`` kernel call over their ``UnionLayout`` (derived data: built at a task boundary, updated
    incrementally after a DST repack of ``inner``), or, where ``sparsecl.dispatch`` measured it faster for the
    layer's shape, union density and input, the dense computation on the effective weight (the same
    gradient contract: only the trainable values get one). ``layer.inner.dispatch`` overrides the choice.
  * ``"dense-masked"``: ``DenseMaskedLinear`` / ``MaskedConv2d``, the peer-library baseline
    ``F.linear(x, weight * mask)`` / ``F.conv2d(x, weight * mask)`` (frozen entries protected by the
    trainer's FrozenGuard). The sparse conv kernels are groups=1 only, so depthwise convs stay ``MaskedConv2d``
    in both modes.

Trunk layers offer to the trainer: ``dst_module()`` (the module the DST engine updates), ``dst_mask()`` /
``dense_weight()`` over all positions (frozen and trainable) in the 2-D DST view ([out, in] or
[out, in*kh*kw]), ``sparse_parameter`` (the trained values; ``parameter_holds_frozen`` says whether it also
holds frozen entries, which the trainer must then guard), ``allocate(new, values)`` at a task start,
``freeze()`` at its end, ``load_split`` on resume, and ``functional(x, w)`` for the per-task evaluation view.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..dispatch import DispatchMixin
from ..formats import CSRLayout, UnionLayout
from ..nn import SparseConv2d, SparseLinear
from ..ops import union_conv2d, union_linear
from ..ops.union import frozen_part, union_conv2d_spec, union_linear_spec


def _identity_src(old_mask, new_mask):
    src = torch.arange(new_mask.numel(), device=new_mask.device)
    return torch.where((old_mask != new_mask).flatten(), torch.full_like(src, -1), src)


class _DenseMasked(nn.Module):
    """The peer-library way, shared by ``DenseMaskedLinear`` and ``MaskedConv2d``: a dense ``weight`` and a
    bool ``_mask`` over its 2-D DST view; frozen entries live in the weight (the trainer's FrozenGuard)."""

    dst_block_size = 1
    parameter_holds_frozen = True

    @property
    def sparse_parameter(self):
        return self.weight

    def dst_mask(self):
        return self._mask

    def mask(self):
        return self._mask

    def dense_weight(self):
        return self.weight.view(self._mask.shape) * self._mask

    def set_topology(self, new_mask):
        new_mask = new_mask.to(torch.bool).reshape(self._mask.shape)
        src = _identity_src(self._mask, new_mask)
        with torch.no_grad():
            self.weight.view(-1).masked_fill_(src < 0, 0.0)
        self._mask.copy_(new_mask)
        return src

    def dst_module(self):
        return self

    def set_weight_and_mask(self, weight, mask):
        with torch.no_grad():
            self.weight.copy_(weight.reshape(self.weight.shape) * mask.reshape(self.weight.shape))
        self._mask.copy_(mask.reshape(self._mask.shape))
        return self

    def allocate(self, new, values):
        """Start a task: add the free positions ``new`` to the mask with ``values`` there."""
        with torch.no_grad():
            self.weight.view(-1)[new.flatten()] = values.flatten()[new.flatten()].to(self.weight)
        self._mask |= new.reshape(self._mask.shape)

    def freeze(self):
        """Ownership alone protects frozen entries here (see FrozenGuard)."""

    def load_split(self, weight, mask, owned):
        self.set_weight_and_mask(weight, mask)


class DenseMaskedLinear(_DenseMasked):
    """Peer-library baseline: dense ``weight`` [out, in] and bool mask; forward ``F.linear(x, weight*mask)``."""

    def __init__(self, in_features, out_features, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, device=device, dtype=dtype))
        self.register_buffer("_mask", torch.zeros(out_features, in_features, dtype=torch.bool, device=device))

    def forward(self, x):
        return F.linear(x, self.weight * self._mask)

    def functional(self, x, w):
        return F.linear(x, w)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={int(self._mask.sum())}"


class MaskedConv2d(_DenseMasked):
    """Conv2d with a bool mask over its weight (dense-masked mode; depthwise convs in both modes).

    The DST view is 2-D: ``dst_mask()``/``dense_weight()`` are [out, in/groups * kh * kw].
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_ch, out_ch, groups
        # nn.Conv2d attribute names, so code that handles convs (the DST engine's dense-gradient hook) sees one
        self.kernel_size, self.stride, self.padding, self.dilation = (kernel_size,) * 2, (stride,) * 2, (padding,) * 2, (1, 1)
        shape = (out_ch, in_ch // groups, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
        self.register_buffer("_mask", torch.zeros(out_ch, shape[1] * kernel_size ** 2, dtype=torch.bool,
                                                  device=device))

    def functional(self, x, w):
        return F.conv2d(x, w.view(self.weight.shape), None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        return self.functional(x, self.weight * self._mask.view(self.weight.shape))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, nnz={int(self._mask.sum())}")


class _CountsRepacks:
    """Mixin for a trainable part: ``topology_version`` counts DST repacks, ``last_repack`` is the latest's
    (version, src), so the owning trunk layer updates its union incrementally."""

    topology_version = 0
    last_repack = None

    def set_topology(self, new_mask):
        src = super().set_topology(new_mask)
        self.topology_version += 1
        self.last_repack = (self.topology_version, src)
        return src


class TrainableLinear(_CountsRepacks, SparseLinear, DispatchMixin):
    """csr ``SparseLinear`` whose forward can also take its trunk layer's frozen values and union: then the
    whole layer (frozen + trainable) is ONE ``union_linear`` call, or per pass the dense computation on the
    effective weight where ``sparsecl.dispatch`` measured it faster. The DST engine sees this module (its
    dense-gradient hook gets the whole layer's dW)."""

    def forward(self, x, frozen_values=None, union=None):
        if union is None:
            return super().forward(x)
        hook = self.dense_grad_hook
        return self.dispatcher(x, self.values, None, lambda: union_linear_spec(union, frozen_values), _density(union),
                               lambda: union_linear(x, frozen_values, self.values, union, dense_grad_hook=hook), hook,
                               [frozen_part(union, frozen_values)])


class TrainableConv2d(_CountsRepacks, SparseConv2d, DispatchMixin):
    """Unstructured ``SparseConv2d`` whose forward can also take its trunk layer's frozen values and union:
    then the whole layer is ONE ``union_conv2d`` call, or per pass the dense conv where ``sparsecl.dispatch``
    measured it faster (the DST engine's forward hook sees the layer's output)."""

    def forward(self, x, frozen_values=None, union=None):
        if union is None:
            return super().forward(x)
        geom = (self.stride, self.padding, self.dilation)
        return self.dispatcher(
            x, self.values, None, lambda: union_conv2d_spec(x, union, frozen_values, self.kernel_size, *geom),
            _density(union), lambda: union_conv2d(x, frozen_values, self.values, union, self.kernel_size, None, *geom),
            None, [frozen_part(union, frozen_values)])


def _density(union):
    total = union.shape[0] * union.shape[1]
    return union.nnz / total if total else 0.0


_INDEX_NAMES = ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm")


class _FrozenPlusTrainable(nn.Module):
    """Shared by the trunk layers: earlier tasks' weights as frozen CSR values + index in buffers over the
    2-D view ``self._shape2d`` (no gradient, no optimizer state), ``self.inner`` holding the current task's
    trainable weights, and their ``UnionLayout`` (``union()``), which every pass computes over."""

    parameter_holds_frozen = False  # sparse_parameter is the inner layer's values: trainable entries only

    def _init_parts(self):
        empty = torch.zeros(self._shape2d, dtype=torch.bool)
        self._set_frozen(torch.zeros(self._shape2d), empty)
        self._set_inner(torch.zeros(self._shape2d), empty)

    def _set_frozen(self, weight, mask):
        layout = CSRLayout.from_mask(mask)
        self.register_buffer("frozen_values", layout.values_from_dense(weight).detach().clone())
        for name, t in layout.index_tensors().items():
            self.register_buffer("frozen_" + name, t)
        self._union, self._union_key = None, None

    @property
    def frozen_layout(self):
        t = [getattr(self, "frozen_" + n) for n in _INDEX_NAMES]
        return CSRLayout(t[0], t[1], self._shape2d, validate=False, _derived=tuple(t[2:]))

    def union(self):
        """The frozen + trainable ``UnionLayout``: rebuilt after a task boundary (new buffers) or a device
        move, updated incrementally (one index merge) after a single DST repack of the inner layer."""
        inner = self.inner
        key = (id(inner), inner.topology_version, self.frozen_values.data_ptr(), inner.values.data_ptr())
        if self._union_key != key:
            old = self._union_key
            if (old is not None and old[0] == key[0] and old[2:] == key[2:] and inner.last_repack is not None
                    and old[1] + 1 == inner.topology_version == inner.last_repack[0]):
                self._union = self._union.with_trainable_repack(inner.last_repack[1], inner.layout)
            else:
                self._union = UnionLayout.from_parts(self.frozen_layout, inner.layout)
            self._union_key = key
        return self._union

    def forward(self, x):
        # also without frozen weights: the union path's linear dX needs no per-step gather through t_perm
        return self.inner(x, self.frozen_values, self.union())

    def dst_module(self):
        return self.inner

    @property
    def sparse_parameter(self):
        return self.inner.sparse_parameter

    def dst_mask(self):
        """Union of frozen and trainable positions over the 2-D view."""
        return self.frozen_layout.mask() | self.inner.dst_mask()

    mask = dst_mask

    def dense_weight(self):
        return self.frozen_layout.to_dense(self.frozen_values) + self.inner.dense_weight().view(self._shape2d)

    def allocate(self, new, values):
        """Start a task: ``new`` (bool, free positions) become the trainable part with ``values``."""
        self._set_inner(values, new)

    def freeze(self):
        """End a task: merge the trainable part into the frozen CSR part."""
        self.load_split(self.dense_weight().detach(), self.dst_mask(), self.dst_mask())

    def load_split(self, weight, mask, owned):
        """Restore from a dense weight: ``mask & owned`` frozen, ``mask & ~owned`` trainable."""
        self._set_frozen(weight, mask & owned)
        self._set_inner(weight, mask & ~owned)


class SparseTrunkLinear(_FrozenPlusTrainable):
    """A trunk linear layer [out, in] in two compact parts (frozen CSR buffers + a trainable ``TrainableLinear``)
    computed as ONE ``union_linear`` call over their union. Frozen values have no gradient and no optimizer
    state, so they cannot move (bit-identity is structural) and optimizer memory scales with the trainable nnz.
    """

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._shape2d = (out_features, in_features)
        self._init_parts()

    def _set_inner(self, weight, mask):
        lin = nn.Linear(self.in_features, self.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(weight * mask)
        self.inner = TrainableLinear.from_dense(lin, mask=mask, mode="csr")
        self._union, self._union_key = None, None

    def functional(self, x, w):
        return F.linear(x, w)


class SparseTrunkConv2d(_FrozenPlusTrainable):
    """A groups=1 trunk conv in two compact parts (frozen CSR buffers + a trainable ``TrainableConv2d``),
    computed as ONE ``union_conv2d`` call per pass over their union. The DST view is 2-D, [out, in * kh * kw].
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_ch, out_ch, 1
        self.kernel_size, self.stride, self.padding, self.dilation = (kernel_size,) * 2, (stride,) * 2, (padding,) * 2, (1, 1)
        self._shape2d = (out_ch, in_ch * kernel_size ** 2)
        self._init_parts()

    def _set_inner(self, weight, mask):
        self.inner = TrainableConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                     bias=False, mask=mask.to(weight.device), device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.inner.values.copy_(self.inner.layout.values_from_dense(weight))
        self._union, self._union_key = None, None

    def functional(self, x, w):
        return F.conv2d(x, w.view(self.out_channels, self.in_channels, *self.kernel_size), None, self.stride,
                        self.padding, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"frozen={self.frozen_values.numel()}, trainable={self.inner.values.numel()}")


def make_linear(in_features, out_features, mode):
    if mode == "dense-masked":
        return DenseMaskedLinear(in_features, out_features)
    if mode == "sparse":
        return SparseTrunkLinear(in_features, out_features)
    raise ValueError(f"mode must be 'sparse' or 'dense-masked', got {mode!r}")


def make_conv(in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, mode="sparse"):
    """A trunk conv: ``SparseTrunkConv2d`` in sparse mode for groups=1; ``MaskedConv2d`` in dense-masked
    mode and for grouped/depthwise convs (sparsecl's sparse conv kernels are groups=1 only)."""
    if mode not in ("sparse", "dense-masked"):
        raise ValueError(f"mode must be 'sparse' or 'dense-masked', got {mode!r}")
    if mode == "sparse" and groups == 1:
        return SparseTrunkConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
    return MaskedConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups)
