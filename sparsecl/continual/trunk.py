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
holds frozen entries, which the trainer must then guard), ``allocate(new, values, reused, owned)`` at a task
start, ``freeze()`` at its end, ``stored_weight()`` (every stored value: frozen, in the task mask or not, and
trainable) for checkpoints, ``load_split`` on resume, and ``functional(x, w)`` for the ``reuse: all`` evaluation.

Reuse (the trainer's ``reuse`` key): with ``reused=None`` a layer reads every frozen weight of earlier tasks
(``reuse: all``). With a bool ``reused`` mask (``reuse: mask``, the paper's per-task subnetwork) it reads only
the frozen weights inside the task mask ``reused | trainable``; ``subnetwork_dst(layer)`` then gives the DST
engine that whole task mask, so magnitude pruning may drop reused frozen connections and growth may re-add
them (they come back with their frozen value, never trained: no gradient, no optimizer state).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..dispatch import DispatchMixin
from ..formats import CSRLayout, UnionLayout, repack_values_
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
    _owned = None  # reuse: mask: bool positions of earlier tasks, whose values set_topology must keep

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
        dropped = src < 0  # under reuse: mask an earlier task's value stays, in the mask or out of it
        if self._owned is not None:
            dropped &= ~self._owned.flatten()
        with torch.no_grad():
            self.weight.view(-1).masked_fill_(dropped, 0.0)
        self._mask.copy_(new_mask)
        return src

    def dst_module(self):
        return self

    def set_weight_and_mask(self, weight, mask):
        with torch.no_grad():
            self.weight.copy_(weight.reshape(self.weight.shape) * mask.reshape(self.weight.shape))
        self._mask.copy_(mask.reshape(self._mask.shape))
        return self

    def allocate(self, new, values, reused=None, owned=None):
        """Start a task: the free positions ``new`` get ``values``. ``reused`` None: add them to the mask (which
        keeps every earlier task's position); else the mask becomes ``reused | new`` (bool masks of the 2-D
        view; ``owned``, the positions of earlier tasks, keep their values when DST drops them)."""
        with torch.no_grad():
            self.weight.view(-1)[new.flatten()] = values.flatten()[new.flatten()].to(self.weight)
        if reused is None:
            self._mask |= new.reshape(self._mask.shape)
        else:
            self._mask.copy_((reused | new).reshape(self._mask.shape))
            self._owned = owned.reshape(self._mask.shape).clone()

    def freeze(self):
        """Ownership alone protects frozen entries here (see FrozenGuard)."""

    def stored_weight(self):
        """Every stored value over the 2-D view: earlier tasks' (in the task mask or not) and trainable."""
        return self.weight.view(self._mask.shape)

    def load_split(self, weight, mask, owned, reused=None):
        """Restore from a dense weight: ``mask`` the stored positions, ``owned`` earlier tasks'; ``reused``
        (reuse: mask) the earlier tasks' positions in the current task mask."""
        if reused is None:
            self.set_weight_and_mask(weight, mask)
            return
        self.set_weight_and_mask(weight, mask)
        self._mask.copy_((reused | (mask & ~owned)).reshape(self._mask.shape))
        self._owned = owned.reshape(self._mask.shape).clone()


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

    @torch.no_grad()
    def set_trainable_mask(self, new_mask):
        """Repack to ``new_mask`` whatever its count (reuse: mask: a DST update moves entries between the
        reused frozen part and this one): kept values bit-identical, new ones 0, ``values`` the same Parameter.
        Returns src as ``set_topology`` does. Call it with no autograd graph through ``values`` alive: a live
        graph keeps the values' gradient accumulator, with the old count, for the next backward."""
        layout, src = self.layout.with_topology(new_mask.to(self.values.device))
        self._set_layout(layout)
        src = repack_values_(self.values, src)
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
    _reused = None  # reuse: mask: (CSRLayout, values) of the frozen weights in the task mask; None: all of them
    _reuse_version = 0

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
        self._select(None)

    def _select(self, reused):
        """Read the frozen weights at bool ``reused`` (2-D view, a subset of the frozen positions) only, or all
        of them (None). Their values are gathered from the frozen store by key, bit-identical."""
        self._reuse_version += 1
        self._union, self._union_key = None, None
        if reused is None:
            self._reused = None
            return
        layout = CSRLayout.from_mask(reused.reshape(self._shape2d).to(self.frozen_values.device))
        store, keys = self.frozen_layout.keys(), layout.keys()
        at = torch.searchsorted(store, keys)
        if keys.numel() and (int(at.max()) >= store.numel() or not torch.equal(store[at], keys)):
            raise ValueError("reused positions must be frozen positions of earlier tasks")
        self._reused = (layout, self.frozen_values[at])

    def _active_frozen(self):
        """(CSRLayout, values) of the frozen weights this layer reads now."""
        return (self.frozen_layout, self.frozen_values) if self._reused is None else self._reused

    @property
    def frozen_layout(self):
        t = [getattr(self, "frozen_" + n) for n in _INDEX_NAMES]
        return CSRLayout(t[0], t[1], self._shape2d, validate=False, _derived=tuple(t[2:]))

    def union(self):
        """The frozen + trainable ``UnionLayout``: rebuilt after a task boundary (new buffers) or a device
        move, updated incrementally (one index merge) after a single DST repack of the inner layer."""
        inner = self.inner
        key = (id(inner), inner.topology_version, self.frozen_values.data_ptr(), inner.values.data_ptr(),
               self._reuse_version)
        if self._union_key != key:
            old = self._union_key
            if (old is not None and old[0] == key[0] and old[2:] == key[2:] and inner.last_repack is not None
                    and old[1] + 1 == inner.topology_version == inner.last_repack[0]):
                self._union = self._union.with_trainable_repack(inner.last_repack[1], inner.layout)
            else:
                self._union = UnionLayout.from_parts(self._active_frozen()[0], inner.layout)
            self._union_key = key
        return self._union

    def forward(self, x):
        # also without frozen weights: the union path's linear dX needs no per-step gather through t_perm
        return self.inner(x, self._active_frozen()[1], self.union())

    def dst_module(self):
        return self.inner

    @property
    def sparse_parameter(self):
        return self.inner.sparse_parameter

    def dst_mask(self):
        """The positions the layer computes with, over the 2-D view: the frozen ones it reads (all, or the
        reused ones of the task mask) and the trainable ones."""
        return self._active_frozen()[0].mask() | self.inner.dst_mask()

    mask = dst_mask

    def dense_weight(self):
        layout, values = self._active_frozen()
        return layout.to_dense(values) + self.inner.dense_weight().view(self._shape2d)

    def stored_weight(self):
        """Every stored value over the 2-D view: all frozen ones (in the task mask or not) and trainable."""
        return self.frozen_layout.to_dense(self.frozen_values) + self.inner.dense_weight().view(self._shape2d)

    def allocate(self, new, values, reused=None, owned=None):
        """Start a task: ``new`` (bool, free positions) become the trainable part with ``values``; the layer
        reads every frozen weight (``reused`` None) or those at ``reused`` only (``owned`` is implied by the
        frozen part here)."""
        self._set_inner(values, new)
        self._select(reused)

    def set_task_mask(self, new_mask):
        """reuse: mask: the task mask after a DST update (same count): its frozen positions are read with their
        frozen values, the rest is the trainable part (kept values bit-identical, new ones 0). Returns the
        trainable values' src (see ``set_topology``)."""
        new_mask = new_mask.reshape(self._shape2d)
        frozen = self.frozen_layout.mask().to(new_mask.device)
        src = self.inner.set_trainable_mask(new_mask & ~frozen)
        self._select(new_mask & frozen)
        return src

    def freeze(self):
        """End a task: merge the trainable part into the frozen CSR part; the layer then reads all of it."""
        stored = self.frozen_layout.mask() | self.inner.dst_mask()
        self.load_split(self.stored_weight().detach(), stored, stored)

    def load_split(self, weight, mask, owned, reused=None):
        """Restore from a dense weight: ``mask & owned`` frozen, ``mask & ~owned`` trainable; ``reused`` as
        in ``allocate``."""
        self._set_frozen(weight, mask & owned)
        self._set_inner(weight, mask & ~owned)
        self._select(reused)


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


class SubnetworkDST(nn.Module):
    """The DST layer protocol over a sparse trunk layer's whole task mask (``reuse: mask``): ``dst_mask()`` is
    the task mask (reused frozen + trainable positions), ``dense_weight()`` its values (magnitude pruning
    weighs reused frozen weights like trainable ones), ``sparse_parameter`` the trainable values only, and
    ``set_topology`` splits the new mask into reused frozen positions (read with their frozen values, never
    trained) and trainable ones. Dense gradients for growth come from the trainable part's hook or forward
    (the whole layer's dW). Not a submodule of anything: the model owns the layer."""

    dst_block_size = 1

    def __init__(self, layer):
        super().__init__()
        object.__setattr__(self, "layer", layer)
        for name in ("kernel_size", "stride", "padding", "dilation", "groups"):
            if hasattr(layer, name):
                object.__setattr__(self, name, getattr(layer, name))

    def __getattr__(self, name):  # the dense-gradient hook exists where the trainable part has one
        if name == "dense_grad_hook" and hasattr(self.layer.inner, name):
            return self.layer.inner.dense_grad_hook
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name == "dense_grad_hook":
            self.layer.inner.dense_grad_hook = value
        else:
            super().__setattr__(name, value)

    def register_forward_hook(self, hook, **kwargs):
        return self.layer.inner.register_forward_hook(hook, **kwargs)

    @property
    def sparse_parameter(self):
        return self.layer.inner.sparse_parameter

    def dst_mask(self):
        return self.layer.dst_mask()

    def dense_weight(self):
        return self.layer.dense_weight()

    def set_topology(self, new_mask):
        return self.layer.set_task_mask(new_mask)


def subnetwork_dst(layer):
    """What the DST engine updates under ``reuse: mask``: a ``SubnetworkDST`` over a frozen + trainable trunk
    layer, or the dense-masked layer itself (its mask is the task mask already)."""
    return SubnetworkDST(layer) if isinstance(layer, _FrozenPlusTrainable) else layer


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
