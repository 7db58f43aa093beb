"""Multi-head models for task-incremental learning, built from sparse layers.

Every model has a shared trunk of sparse layers (``model.sparse_layers``) and, per task, its own head
and its own normalisation parameters, so training task t never touches anything task j < t uses apart
from the trunk weights, which the trainer freezes by ownership.

Per-task normalisation (evaluation never depends on batch composition):
  * MLP: no normalisation layer; each task has its own bias vector after every hidden sparse layer
    (the shared sparse layers carry no bias, since a shared bias would drift across tasks).
  * CNNs: one BatchNorm2d per task and per BN site (``TaskBatchNorm2d``); in eval mode it uses that
    task's running statistics, so a test prediction depends only on the input and the task id.

Layers (``mode``):
  * ``"sparse"``: ``SparseTrunkLinear`` (frozen CSR part + a trainable ``sparsecl.nn.SparseLinear``,
    computed as one ``csr_linear`` kernel call over their union).
  * ``"dense-masked"``: ``DenseMaskedLinear``, the peer-library baseline ``F.linear(x, weight * mask)``.
  * Convolutions (``make_conv``): sparse mode uses ``SparseTrunkConv2d`` (frozen CSR part + a trainable
    ``sparsecl.nn.SparseConv2d``, both on the ``csr_conv2d`` kernel) for every groups=1 conv; dense-masked
    mode uses ``MaskedConv2d`` (dense ``nn.Conv2d`` weight times a mask, same DST protocol). The sparse conv
    kernels are groups=1 only, so MobileNetV2's depthwise 3x3 convs stay ``MaskedConv2d`` in both modes
    (they hold a small share of its weights; its stem, expansion and projection 1x1 convs are sparse).

Trunk layers offer to the trainer: ``dst_module()`` (the module the DST engine updates), ``dst_mask()`` /
``dense_weight()`` over all positions (frozen and trainable), ``sparse_parameter`` (the trained values;
``parameter_holds_frozen`` says whether it also holds frozen entries, which the trainer must then guard),
``allocate(new, values)`` at a task start, ``freeze()`` at its end, ``load_split`` on resume, and
``functional(x, w)`` for the per-task evaluation view. ``DenseMaskedLinear``/``MaskedConv2d`` are themselves
DST protocol layers (one dense weight; frozen entries protected by the trainer's FrozenGuard).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import CSRLayout, entries_at
from ..nn import SparseConv2d, SparseLinear
from ..ops import csr_conv2d
from ..ops._registry import hook_dense_grad
from ..ops.csr_linear import _kernels as _csr_kernels


def _identity_src(old_mask, new_mask):
    src = torch.arange(new_mask.numel(), device=new_mask.device)
    return torch.where((old_mask != new_mask).flatten(), torch.full_like(src, -1), src)


class _DenseMasked(nn.Module):
    """The peer-library way, shared by ``DenseMaskedLinear`` and ``MaskedConv2d``: a dense ``weight`` and a
    bool ``_mask`` over its 2-D DST view [out, in * kh * kw]; frozen entries live in the weight and are
    protected by the trainer's FrozenGuard."""

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
    """Peer-library baseline: dense ``weight`` [out, in] and bool ``mask``; forward ``F.linear(x, weight*mask)``."""

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


def make_linear(in_features, out_features, mode):
    if mode == "dense-masked":
        return DenseMaskedLinear(in_features, out_features)
    if mode == "sparse":
        return SparseTrunkLinear(in_features, out_features)
    raise ValueError(f"mode must be 'sparse' or 'dense-masked', got {mode!r}")


_INDEX_NAMES = ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm")


class _UnionLinear(torch.autograd.Function):
    """``y = x @ W.T`` for W = frozen + trainable of a ``_Union``; gradient for x and ``trainable`` only.

    One forward SpMM over the union. dX runs the same SpMM kernel over the transposed index with values
    kept in transposed order (``base_t``), so there is no per-step gather through t_perm. dTrainable is the
    SDDMM at the trainable positions only (on DST growth steps: gathered from the dense dW that the layer's
    ``dense_grad_hook`` gets). The union's persistent value buffers get the current trainable
    values scattered in right before each kernel call: a step writes the trainable entries only.
    """

    # ctx-style forward: Function.apply then skips its per-call inspect.signature binding (setup_context
    # style pays it on every step, a measurable share of a ~1 ms layer)
    @staticmethod
    def forward(ctx, x, trainable, union, out_features, dense_grad_hook):
        fwd = union.kernels[0]
        ctx.union, ctx.dense_grad_hook = union, dense_grad_hook
        ctx.save_for_backward(x, trainable)
        return fwd(x, union.base.scatter_(0, union.index, trainable.detach()), union.tensors[0], union.tensors[1],
                   out_features, None)

    @staticmethod
    def backward(ctx, grad_out):
        x, trainable = ctx.saved_tensors
        u = ctx.union
        fwd, _, dw = u.kernels
        grad_out = grad_out.contiguous()
        dx = dt = None
        if ctx.needs_input_grad[0]:
            dx = fwd(grad_out, u.base_t.scatter_(0, u.index_t, trainable), u.tensors[3], u.tensors[4], x.shape[1],
                     None)
        if ctx.dense_grad_hook is not None:  # a growth step: the dense dW over the whole layer, dTrainable from it
            dense = hook_dense_grad(ctx.dense_grad_hook, grad_out, x)
            if ctx.needs_input_grad[1]:
                dt = entries_at(dense, u.train_rows, u.train_cols).to(trainable.dtype)
        elif ctx.needs_input_grad[1]:
            dt = dw(grad_out, x, u.train_rows, u.train_cols)
        return dx, dt, None, None, None


class _Union:
    """The frozen + trainable CSR union of one trunk layer: derived data, built at a task boundary and
    updated incrementally (one index merge, no sort of the union) when DST repacks the trainable part.

    layout: union CSRLayout; base / base_t: union values in CSR / transposed order (frozen values, the
    trainable entries are scattered in before each use); index / index_t: positions of the trainable
    entries (in their own CSR order) in the union's CSR / transposed order."""

    def __init__(self, frozen_layout, frozen_values, train_layout):
        # the trainable positions are free ones, so the union is the frozen index with them grown in: one
        # merge of two sorted index lists, no sort
        keep_all = torch.ones(frozen_layout.nnz, dtype=torch.bool, device=frozen_values.device)
        layout, src = frozen_layout.update(keep_all, train_layout.keys())
        is_train = src < 0
        base = frozen_values.new_zeros(layout.nnz).masked_scatter_(~is_train, frozen_values)
        self._set(layout, base, is_train, train_layout)

    def _set(self, layout, base, is_train, train_layout):
        self.layout, self.base, self.is_train = layout, base, is_train
        self.index = is_train.nonzero().squeeze(1)
        t_perm = layout.t_perm.long()
        inv = torch.empty_like(t_perm).scatter_(0, t_perm, torch.arange(t_perm.numel(), device=t_perm.device))
        self.base_t = base.index_select(0, t_perm)
        self.index_t = inv.index_select(0, self.index)
        self.tensors = (layout.row_ptr, layout.col_idx, layout.row_idx, layout.t_row_ptr, layout.t_col_idx,
                        layout.t_perm)
        self.train_rows, self.train_cols = train_layout.row_idx, train_layout.col_idx
        self.kernels = _csr_kernels(base.device)

    def repacked(self, src, train_layout):
        """The union after a repack of the trainable part (a new object: autograd may hold this one):
        ``src`` from its ``set_topology`` (new entry -> old entry or -1), ``train_layout`` its new layout.
        Frozen entries keep their union values."""
        kept = torch.zeros(self.index.numel(), dtype=torch.bool, device=src.device)
        kept[src[src >= 0]] = True
        keep = torch.ones_like(self.is_train)
        keep[self.index[~kept]] = False
        layout, usrc = self.layout.update(keep, train_layout.keys()[src < 0])
        old = usrc.clamp(min=0)
        is_train = (usrc < 0) | self.is_train.index_select(0, old)
        base = self.base.index_select(0, old)  # a grown entry's value is scattered in before use
        new = _Union.__new__(_Union)
        new._set(layout, base, is_train, train_layout)
        return new


class TrainablePart(SparseLinear):
    """csr ``SparseLinear`` whose forward can also take its trunk layer's frozen ``_Union``: then the whole
    layer (frozen + trainable) is ONE kernel call per pass. The DST engine sees this module (its hooks
    see the layer's full output gradient); ``topology_version`` counts DST repacks."""

    topology_version = 0
    last_repack = None  # (topology_version, src) of the latest set_topology

    def forward(self, x, union=None):
        if union is None:
            return super().forward(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} input features, the layer expects {self.in_features}")
        lead = x.shape[:-1]
        y = _UnionLinear.apply(x.reshape(lead.numel(), self.in_features), self.values, union, self.out_features,
                               self.dense_grad_hook)
        return y.reshape(*lead, self.out_features)

    def set_topology(self, new_mask):
        src = super().set_topology(new_mask)
        self.topology_version += 1
        self.last_repack = (self.topology_version, src)
        return src


class _FrozenPlusTrainable(nn.Module):
    """Shared by the trunk layers: earlier tasks' weights as frozen CSR values + index in buffers over the
    2-D view ``self._shape2d`` (no gradient, no optimizer state), and ``self.inner``, the sparse layer
    holding the current task's trainable weights (the only module the DST engine sees)."""

    parameter_holds_frozen = False  # sparse_parameter is the inner layer's values: trainable entries only

    def _set_frozen(self, weight, mask):
        layout = CSRLayout.from_mask(mask)
        self.register_buffer("frozen_values", layout.values_from_dense(weight).detach().clone())
        for name, t in layout.index_tensors().items():
            self.register_buffer("frozen_" + name, t)

    @property
    def frozen_layout(self):
        t = [getattr(self, "frozen_" + n) for n in _INDEX_NAMES]
        return CSRLayout(t[0], t[1], self._shape2d, validate=False, _derived=tuple(t[2:]))

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
    """A trunk layer in two compact parts, computed as ONE CSR kernel call over their union.

    * frozen part: the weights earlier tasks own, as CSR values + index in buffers (no gradient, no
      optimizer state, so they cannot move: bit-identity is structural, and optimizer memory scales with
      the trainable nnz only);
    * ``inner``: a bias-free csr ``SparseLinear`` holding the current task's trainable weights, the only
      module here the DST engine sees (its mask never contains a frozen position).
    The forward/backward run over the union (frozen + trainable) CSR index, rebuilt only when the frozen
    part or the inner topology changes (task boundaries and DST updates), not per step.
    """

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._shape2d = (out_features, in_features)
        empty = torch.zeros(out_features, in_features, dtype=torch.bool)
        self._set_frozen(torch.zeros(out_features, in_features), empty)
        self._set_inner(torch.zeros(out_features, in_features), empty)

    def _set_frozen(self, weight, mask):
        super()._set_frozen(weight, mask)
        self._union, self._union_key = None, None

    def _set_inner(self, weight, mask):
        lin = nn.Linear(self.in_features, self.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(weight * mask)
        self.inner = TrainablePart.from_dense(lin, mask=mask, mode="csr")
        self._union, self._union_key = None, None

    def _union_state(self):
        # derived data: built after a task boundary (new buffers) or a device move, updated incrementally
        # after a single DST repack of the inner layer
        inner = self.inner
        key = (id(inner), inner.topology_version, self.frozen_values.data_ptr(), inner.values.data_ptr())
        if self._union_key != key:
            old = self._union_key
            if (old is not None and old[0] == key[0] and old[2:] == key[2:] and inner.last_repack is not None
                    and old[1] + 1 == inner.topology_version == inner.last_repack[0]):
                self._union = self._union.repacked(inner.last_repack[1], inner.layout)
            else:
                self._union = _Union(self.frozen_layout, self.frozen_values, inner.layout)
            self._union_key = key
        return self._union

    def forward(self, x):
        # also without frozen weights: the union path's dX needs no per-step gather through t_perm
        return self.inner(x, self._union_state())

    def functional(self, x, w):
        return F.linear(x, w)

class SparseTrunkConv2d(_FrozenPlusTrainable):
    """A groups=1 trunk conv in two compact parts, both on the real sparse conv kernel (``csr_conv2d``):
    the frozen weights of earlier tasks as CSR values + index in buffers (no gradient, no optimizer
    state), and ``inner``, a bias-free unstructured ``sparsecl.nn.SparseConv2d`` holding the current
    task's trainable weights (the module the DST engine sees). The DST view is 2-D,
    [out, in * kh * kw], as for ``MaskedConv2d``.
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_ch, out_ch, 1
        self.kernel_size, self.stride, self.padding, self.dilation = (kernel_size,) * 2, (stride,) * 2, (padding,) * 2, (1, 1)
        self._shape2d = (out_ch, in_ch * kernel_size ** 2)
        empty = torch.zeros(self._shape2d, dtype=torch.bool)
        self._set_frozen(torch.zeros(self._shape2d), empty)
        self._set_inner(torch.zeros(self._shape2d), empty)

    def _set_inner(self, weight, mask):
        self.inner = SparseConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                  bias=False, mask=mask.to(weight.device), device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.inner.values.copy_(self.inner.layout.values_from_dense(weight))

    def forward(self, x):
        y = self.inner(x)
        if self.frozen_values.numel():
            y = y + csr_conv2d(x, self.frozen_values, self.frozen_layout, self.kernel_size, None, self.stride,
                               self.padding, self.dilation)
        return y

    def functional(self, x, w):
        return F.conv2d(x, w.view(self.out_channels, self.in_channels, *self.kernel_size), None, self.stride,
                        self.padding, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"frozen={self.frozen_values.numel()}, trainable={self.inner.values.numel()}")


def make_conv(in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, mode="sparse"):
    """A trunk conv: ``SparseTrunkConv2d`` in sparse mode for groups=1; ``MaskedConv2d`` in dense-masked
    mode and for grouped/depthwise convs (sparsecl's sparse conv kernels are groups=1 only)."""
    if mode not in ("sparse", "dense-masked"):
        raise ValueError(f"mode must be 'sparse' or 'dense-masked', got {mode!r}")
    if mode == "sparse" and groups == 1:
        return SparseTrunkConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
    return MaskedConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups)


class TaskBatchNorm2d(nn.Module):
    """One BatchNorm2d per task; ``task`` selects which (set by the owning model)."""

    def __init__(self, channels, n_tasks):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(n_tasks))
        self.task = 0

    def forward(self, x):
        return self.bns[self.task](x)


class ContinualModel(nn.Module):
    """Base: ``sparse_layers`` (ModuleList, the shared trunk), ``heads`` (one per task) and per-task norm.

    ``forward(x, task, weights=None)``: with ``weights`` (one dense tensor per trunk layer) the trunk is
    computed functionally from those weights (the trainer's per-task evaluation view).
    """

    def task_modules(self, task):
        """Modules whose parameters belong to ``task`` alone (head, per-task norm/bias)."""
        raise NotImplementedError

    def _trunk(self, i, x, weights):
        layer = self.sparse_layers[i]
        return layer(x) if weights is None else layer.functional(x, weights[i])

    def set_task(self, task):
        for m in self.modules():
            if isinstance(m, TaskBatchNorm2d):
                m.task = task


class MLP(ContinualModel):
    """``in -> [width]*depth -> head_t``, ReLU, a per-task bias after each sparse layer."""

    def __init__(self, in_features, n_classes, n_tasks, width=1024, depth=2, mode="sparse"):
        super().__init__()
        dims = [in_features] + [width] * depth
        self.sparse_layers = nn.ModuleList(make_linear(a, b, mode) for a, b in zip(dims[:-1], dims[1:]))
        self.biases = nn.ModuleList(nn.ParameterList(nn.Parameter(torch.zeros(width)) for _ in range(depth))
                                    for _ in range(n_tasks))
        self.heads = nn.ModuleList(nn.Linear(width, c) for c in n_classes)

    def task_modules(self, task):
        return [self.biases[task], self.heads[task]]

    def forward(self, x, task, weights=None):
        x = x.flatten(1)
        for i in range(len(self.sparse_layers)):
            x = F.relu(self._trunk(i, x, weights) + self.biases[task][i])
        return self.heads[task](x)


class SmallCNN(ContinualModel):
    """Three 3x3 conv blocks (channels c, 2c, 4c; BN per task; ReLU; 2x2 max-pool) and a per-task linear head."""

    def __init__(self, in_channels, n_classes, n_tasks, width=32, mode="sparse"):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        self.sparse_layers = nn.ModuleList(make_conv(a, b, 3, padding=1, mode=mode) for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(TaskBatchNorm2d(c, n_tasks) for c in chans[1:])
        self.heads = nn.ModuleList(nn.Linear(chans[-1], c) for c in n_classes)

    def task_modules(self, task):
        return [n.bns[task] for n in self.norms] + [self.heads[task]]

    def forward(self, x, task, weights=None):
        self.set_task(task)
        for i in range(len(self.sparse_layers)):
            x = F.max_pool2d(F.relu(self.norms[i](self._trunk(i, x, weights))), 2)
        return self.heads[task](x.mean((2, 3)))


class ResNet18(ContinualModel):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool); ``width`` = first stage channels."""

    def __init__(self, in_channels, n_classes, n_tasks, width=64, mode="sparse"):
        super().__init__()
        convs, norms = [], []

        def conv(a, b, k, s):
            convs.append(make_conv(a, b, k, stride=s, padding=k // 2, mode=mode))
            norms.append(TaskBatchNorm2d(b, n_tasks))
            return len(convs) - 1

        self.stem = conv(in_channels, width, 3, 1)
        self.blocks = []
        c = width
        for stage, mult in enumerate((1, 2, 4, 8)):
            out = width * mult
            for b in range(2):
                s = 2 if stage > 0 and b == 0 else 1
                c1, c2 = conv(c, out, 3, s), conv(out, out, 3, 1)
                sc = conv(c, out, 1, s) if (s != 1 or c != out) else None
                self.blocks.append((c1, c2, sc))
                c = out
        self.sparse_layers = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.heads = nn.ModuleList(nn.Linear(c, n) for n in n_classes)

    def task_modules(self, task):
        return [n.bns[task] for n in self.norms] + [self.heads[task]]

    def _cbn(self, i, x, weights):
        return self.norms[i](self._trunk(i, x, weights))

    def forward(self, x, task, weights=None):
        self.set_task(task)
        x = F.relu(self._cbn(self.stem, x, weights))
        for c1, c2, sc in self.blocks:
            h = F.relu(self._cbn(c1, x, weights))
            h = self._cbn(c2, h, weights)
            x = F.relu(h + (x if sc is None else self._cbn(sc, x, weights)))
        return self.heads[task](x.mean((2, 3)))


class MobileNetV2(ContinualModel):
    """MobileNetV2 (CIFAR variant: stride-1 stem, strides at stages 3, 4, 6); ``width`` multiplies channels."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, in_channels, n_classes, n_tasks, width=1.0, mode="sparse"):
        super().__init__()
        convs, norms = [], []

        def conv(a, b, k, s=1, groups=1):
            convs.append(make_conv(a, b, k, stride=s, padding=k // 2, groups=groups, mode=mode))
            norms.append(TaskBatchNorm2d(b, n_tasks))
            return len(convs) - 1

        ch = lambda c: max(8, int(round(c * width / 8)) * 8)  # noqa: E731
        c = ch(32)
        self.stem = conv(in_channels, c, 3)
        self.blocks = []
        for t, out, n, s in self.CFG:
            out = ch(out)
            for i in range(n):
                hidden = c * t
                ex = conv(c, hidden, 1) if t != 1 else None
                dw = conv(hidden, hidden, 3, s if i == 0 else 1, groups=hidden)
                pw = conv(hidden, out, 1)
                self.blocks.append((ex, dw, pw, (s if i == 0 else 1) == 1 and c == out))
                c = out
        self.last = conv(c, ch(1280) if width > 1.0 else 1280, 1)
        self.sparse_layers = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.heads = nn.ModuleList(nn.Linear(convs[self.last].out_channels, n) for n in n_classes)

    def task_modules(self, task):
        return [n.bns[task] for n in self.norms] + [self.heads[task]]

    def _cbn(self, i, x, weights):
        return self.norms[i](self._trunk(i, x, weights))

    def forward(self, x, task, weights=None):
        self.set_task(task)
        x = F.relu6(self._cbn(self.stem, x, weights))
        for ex, dw, pw, residual in self.blocks:
            h = x if ex is None else F.relu6(self._cbn(ex, x, weights))
            h = self._cbn(pw, F.relu6(self._cbn(dw, h, weights)), weights)
            x = x + h if residual else h
        x = F.relu6(self._cbn(self.last, x, weights))
        return self.heads[task](x.mean((2, 3)))


MODELS = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18, "mobilenetv2": MobileNetV2}


def build_model(name, tasks, mode="sparse", width=None, depth=None):
    """Model ``name`` for a task list (input shape and classes per task taken from the data)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    x = tasks[0].x_train
    n_classes = [t.n_classes for t in tasks]
    kw = {"mode": mode}
    if width is not None:
        kw["width"] = width
    if name == "mlp":
        if depth is not None:
            kw["depth"] = depth
        return MLP(math.prod(x.shape[1:]), n_classes, len(tasks), **kw)
    if x.dim() != 4:
        raise ValueError(f"model {name!r} needs image inputs [N, C, H, W], got {tuple(x.shape)}")
    return MODELS[name](x.shape[1], n_classes, len(tasks), **kw)


def init_values(layer, shape, generator):
    """Fresh values for newly allocated positions: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear/Conv2d."""
    fan_in = layer.dst_mask().shape[1]
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound
