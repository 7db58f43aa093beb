"""Trunk layers of the continual models: the layers the trainer freezes by ownership and DST updates.

Layers (``mode``):
  * ``"sparse"``: ``SparseTrunkLinear`` / ``SparseTrunkConv2d`` (groups=1): earlier tasks' weights in a
    ``CompactCSR`` frozen store in buffers (values, row_ptr, 16-bit column indices where the 2-D view has at
    most 65,536 columns, and the owning task id per entry; no gradient, no optimizer state, no derived index),
    and ``inner``, a csr ``SparseLinear`` / unstructured ``SparseConv2d`` holding the current task's trainable
    weights (the only module the DST engine sees; its mask never contains a frozen position; it keeps
    row_ptr, col_idx and row_idx only, its transposed index is never needed). Each pass is ONE ``union_linear`` /
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
start, ``freeze(owner)`` at its end (``owner``: the task's id, t + 1), ``stored_weight()`` (every stored value:
frozen, in the task mask or not, and trainable) for checkpoints, ``load_split`` on resume, and
``functional(x, w)`` for the ``reuse: all`` evaluation.

Reuse (the trainer's ``reuse`` key): with ``reused=None`` a layer reads every frozen weight of earlier tasks
(``reuse: all``). With a bool ``reused`` mask (``reuse: mask``, the paper's per-task subnetwork) it reads only
the frozen weights inside the task mask ``reused | trainable`` (their values gathered once into the union's own
value buffer, ``UnionLayout.attach_frozen``: no other copy); ``subnetwork_dst(layer)`` then gives the DST
engine that whole task mask, so magnitude pruning may drop reused frozen connections and growth may re-add
them (they come back with their frozen value, never trained: no gradient, no optimizer state).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..dispatch import DispatchMixin
from ..formats import CompactCSR, CSRLayout, UnionLayout, repack_values_
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
    _owned = None  # reuse: mask: earlier tasks' positions (nonzero), whose values set_topology must keep

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
            dropped &= self._owned.flatten() == 0
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
        view; ``owned``, nonzero at the positions of earlier tasks (e.g. the trainer's uint8 owner index, kept
        by reference, not copied), keep their values when DST drops them)."""
        with torch.no_grad():
            self.weight.view(-1)[new.flatten()] = values.flatten()[new.flatten()].to(self.weight)
        if reused is None:
            self._mask |= new.reshape(self._mask.shape)
        else:
            self._mask.copy_((reused | new).reshape(self._mask.shape))
            self._owned = owned.reshape(self._mask.shape)

    def freeze(self, owner=None):
        """Ownership alone protects frozen entries here (see FrozenGuard)."""

    def stored_weight(self):
        """Every stored value over the 2-D view: earlier tasks' (in the task mask or not) and trainable."""
        return self.weight.view(self._mask.shape)

    def load_split(self, weight, mask, owned, reused=None):
        """Restore from a dense weight: ``mask`` the stored positions, ``owned`` nonzero at earlier tasks' (the
        owner index, kept by reference); ``reused`` (reuse: mask) the earlier tasks' positions in the current
        task mask."""
        self.set_weight_and_mask(weight, mask)
        if reused is None:
            return
        self._mask.copy_((reused | (mask & (owned == 0))).reshape(self._mask.shape))
        self._owned = owned.reshape(self._mask.shape)


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


_TRAINABLE_INDEX = ("row_ptr", "col_idx", "row_idx")


class _CountsRepacks:
    """Mixin for a trainable part: ``topology_version`` counts DST repacks, ``last_repack`` is the latest's
    (version, src), so the owning trunk layer updates its union incrementally. Its index buffers are row_ptr,
    col_idx and row_idx only (the union's ``trainable_rows``/``_cols`` are these tensors); ``layout`` derives
    the transposed index when something asks for it, never kept (the union computes every pass)."""

    topology_version = 0
    last_repack = None

    def _set_layout(self, layout):
        for name in _TRAINABLE_INDEX:
            self.register_buffer(name, getattr(layout, name), persistent=name != "row_idx")

    @property
    def layout(self):
        shape = self._shape2d()
        return CSRLayout(self.row_ptr, self.col_idx, shape, validate=False, _derived=(self.row_idx, None, None, None))

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


class _FrozenPart:
    """The frozen part of a union layer's dense weight for ``sparsecl.dispatch``, built only when a pass runs
    densely (iterating it yields the one (values, ActiveIndex) part)."""

    def __init__(self, union, frozen_values):
        self.union, self.frozen_values = union, frozen_values

    def __iter__(self):
        yield frozen_part(self.union, self.frozen_values)


class TrainableLinear(_CountsRepacks, SparseLinear, DispatchMixin):
    """csr ``SparseLinear`` whose forward can also take its trunk layer's frozen values and union: then the
    whole layer (frozen + trainable) is ONE ``union_linear`` call, or per pass the dense computation on the
    effective weight where ``sparsecl.dispatch`` measured it faster. The DST engine sees this module (its
    dense-gradient hook gets the whole layer's dW)."""

    def _shape2d(self):
        return (self.out_features, self.in_features)

    def forward(self, x, frozen_values=None, union=None):
        if union is None:
            return super().forward(x)
        hook = self.dense_grad_hook
        y = self.dispatcher(x, self.values, None, lambda: union_linear_spec(union, frozen_values), _density(union),
                            lambda: union_linear(x, frozen_values, self.values, union, dense_grad_hook=hook), hook,
                            _FrozenPart(union, frozen_values))
        _release_dense_state(self.dispatcher, union)
        return y


class TrainableConv2d(_CountsRepacks, SparseConv2d, DispatchMixin):
    """Unstructured ``SparseConv2d`` whose forward can also take its trunk layer's frozen values and union:
    then the whole layer is ONE ``union_conv2d`` call, or per pass the dense conv where ``sparsecl.dispatch``
    measured it faster (the DST engine's forward hook sees the layer's output)."""

    def _shape2d(self):
        return (self.out_channels, self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x, frozen_values=None, union=None):
        if union is None:
            return super().forward(x)
        geom = (self.stride, self.padding, self.dilation)
        y = self.dispatcher(
            x, self.values, None, lambda: union_conv2d_spec(x, union, frozen_values, self.kernel_size, *geom),
            _density(union), lambda: union_conv2d(x, frozen_values, self.values, union, self.kernel_size, None, *geom),
            None, _FrozenPart(union, frozen_values))
        _release_dense_state(self.dispatcher, union)
        return y


def _release_dense_state(dispatcher, union):
    """After an all-sparse call, free what deciding it may have built: the frozen part's rows/cols in the union
    and the dispatcher's dense weight (a calibration builds one: 4 bytes per position of the layer). A dense
    pass keeps both (its dense weight tracks the rows/cols by identity) and rebuilds them when they are gone."""
    last = dispatcher.last
    if last is None or all(c == "sparse" for c in last["choice"].values()):
        union.forget_frozen_index()
        dispatcher.dense = None


def _density(union):
    total = union.shape[0] * union.shape[1]
    return union.nnz / total if total else 0.0


class _FrozenPlusTrainable(nn.Module):
    """Shared by the trunk layers: earlier tasks' weights in a tagged ``CompactCSR`` frozen store (buffers
    ``frozen_values``, ``frozen_row_ptr``, ``frozen_col_idx`` (int16 up to 65,536 columns of the 2-D view
    ``self._shape2d``, else int32) and ``frozen_owner`` (uint8, the owning task's id t + 1 per entry); no
    gradient, no optimizer state), ``self.inner`` holding the current task's trainable weights, and their
    ``UnionLayout`` (``union()``), which every pass computes over. Under ``reuse: mask`` the union holds the
    reused frozen values itself (gathered from the store once per selection)."""

    parameter_holds_frozen = False  # sparse_parameter is the inner layer's values: trainable entries only
    _reads_selection = False  # reuse: mask: the layer reads the frozen weights its union holds, not all of them

    def _init_parts(self):
        self._set_frozen(CompactCSR.empty(self._shape2d, torch.get_default_dtype()))
        self._set_inner(torch.zeros(self._shape2d), torch.zeros(self._shape2d, dtype=torch.bool))
        self._select(None)

    def _set_frozen(self, store):
        for name, t in store.tensors().items():
            self.register_buffer("frozen_" + ("owner" if name == "tag" else name), t)

    @property
    def frozen_store(self):
        """The frozen weights as a ``CompactCSR`` over this layer's buffers (``tag``: the owning task's id)."""
        return CompactCSR(self.frozen_values, self.frozen_row_ptr, self.frozen_col_idx, self._shape2d,
                          self.frozen_owner, validate=False)

    @property
    def frozen_layout(self):
        """A CSRLayout of the frozen positions (derived from the store on each call)."""
        return self.frozen_store.layout()

    def _select(self, reused):
        """Read the frozen weights at bool ``reused`` (2-D view, a subset of the frozen positions) only, or all
        of them (None). The selected values are gathered from the store into the union's value buffer (no
        other copy), bit-identical."""
        self._union, self._union_key = None, None
        self._reads_selection = reused is not None
        if reused is None:
            return
        keys = reused.reshape(-1).to(self.frozen_values.device).nonzero().squeeze(1)
        try:
            at = self.frozen_store.find(keys)
        except ValueError:
            raise ValueError("reused positions must be frozen positions of earlier tasks") from None
        part = CSRLayout._from_sorted_keys(keys, self._shape2d)
        union = UnionLayout.from_parts(part, self.inner.layout)
        self.inner.last_repack = None  # the union is built afresh: a repack's src is not needed
        self._union = union.attach_frozen(self.frozen_values.index_select(0, at))
        self._union_key = self._key()

    def _key(self):
        inner = self.inner
        return (id(inner), inner.topology_version, self.frozen_values.data_ptr(), inner.values.data_ptr(),
                inner.values.dtype)

    def union(self):
        """The frozen + trainable ``UnionLayout``: rebuilt after a task boundary (new buffers), a selection or a
        device move, updated incrementally (one index merge) after a single DST repack of the inner layer."""
        key = self._key()
        if self._union_key != key:
            old, inner = self._union_key, self.inner
            if (old is not None and old[0] == key[0] and old[2:] == key[2:] and inner.last_repack is not None
                    and old[1] + 1 == inner.topology_version == inner.last_repack[0]):
                self._union = self._union.with_trainable_repack(inner.last_repack[1], inner.layout)
                inner.last_repack = None  # consumed (its src is one int64 per trainable entry)
            elif self._reads_selection:  # around the selection the old union holds (e.g. after a device move)
                part = self._union.frozen_layout().to(inner.values.device)
                values = self._union.frozen_values().to(self.frozen_values)
                self._union = UnionLayout.from_parts(part, inner.layout).attach_frozen(values)
            else:
                self._union = UnionLayout.from_parts(self.frozen_layout, inner.layout)
            self._union_key = key
        return self._union

    def _frozen_arg(self):
        """What the union ops take as frozen values: the whole store, or None (the union holds the selection)."""
        return None if self._reads_selection else self.frozen_values

    def forward(self, x):
        union = self.union()  # one union kernel call per pass, also before any weight is frozen
        return self.inner(x, self._frozen_arg(), union)

    def dst_module(self):
        return self.inner

    @property
    def sparse_parameter(self):
        return self.inner.sparse_parameter

    def dst_mask(self):
        """The positions the layer computes with, over the 2-D view: the frozen ones it reads (all, or the
        reused ones of the task mask) and the trainable ones."""
        return self.union().mask()

    mask = dst_mask

    def dense_weight(self):
        return self.union().to_dense(self._frozen_arg(), self.inner.values)

    def stored_weight(self):
        """Every stored value over the 2-D view: all frozen ones (in the task mask or not) and trainable."""
        return self.frozen_store.to_dense() + self.inner.dense_weight().view(self._shape2d)

    def allocate(self, new, values, reused=None, owned=None):
        """Start a task: ``new`` (bool, free positions) become the trainable part with ``values``; the layer
        reads every frozen weight (``reused`` None) or those at ``reused`` only (``owned`` is implied by the
        frozen store here)."""
        self._set_inner(values, new)
        self._select(reused)

    def set_task_mask(self, new_mask):
        """reuse: mask: the task mask after a DST update (same count): its frozen positions are read with their
        frozen values, the rest is the trainable part (kept values bit-identical, new ones 0). Returns the
        trainable values' src (see ``set_topology``)."""
        new_mask = new_mask.reshape(self._shape2d)
        frozen = self.frozen_store.mask().to(new_mask.device)
        src = self.inner.set_trainable_mask(new_mask & ~frozen)
        self._select(new_mask & frozen)
        return src

    def freeze(self, owner=1):
        """End a task: the trainable part joins the frozen store, tagged ``owner`` (the task's id, 1..255); the
        layer then reads all of it."""
        if not 1 <= int(owner) <= 255:
            raise ValueError(f"owner must be a task id in 1..255 (one byte per frozen weight), got {owner}")
        inner, store = self.inner, self.frozen_store
        dtype = torch.promote_types(store.values.dtype, inner.values.dtype)  # as adding the two dense weights
        store = CompactCSR(store.values.to(dtype), store.row_ptr, store.col_idx, store.shape, store.tag, validate=False)
        new = CompactCSR.from_layout(inner.layout, inner.values.detach().to(dtype), tag=int(owner))
        self._set_frozen(store.merge(new))
        self._set_inner(self.frozen_values.new_zeros(self._shape2d),
                        torch.zeros(self._shape2d, dtype=torch.bool, device=self.frozen_values.device))
        self._select(None)

    def load_split(self, weight, mask, owned, reused=None):
        """Restore from a dense weight: ``mask & owned`` frozen (``owned``: the owner index over the 2-D view,
        uint8 task ids, or bool for owner 1), ``mask & ~owned`` trainable; ``reused`` as in ``allocate``."""
        owner = owned.reshape(self._shape2d).to(weight.device)
        frozen = mask & (owner != 0)
        keys = frozen.reshape(-1).nonzero().squeeze(1)
        tag = owner.reshape(-1).index_select(0, keys).to(torch.uint8)
        values = weight.detach().reshape(-1).index_select(0, keys)
        self._set_frozen(CompactCSR.from_keys(keys, values, self._shape2d, tag))
        self._set_inner(weight, mask & ~frozen)
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
