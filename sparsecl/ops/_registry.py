"""Shared plumbing for op modules: reference kernels, Triton registration, backend choice and autocast."""
import importlib

import torch

from .. import _extension
from ..backend import gpu_backend, weight_density
from ..formats import entries_at
from ..kernels_loader import triton_available


# op name -> its pure-torch kernel: the "aten" GPU backend, and the kernels when the extension is missing
_REFERENCES = {}


def register_reference(op_name, fn, cuda_kernel=False):
    """Record ``fn`` (pure torch) as the "aten" backend of ``sparsecl::op_name``, and use it as the op's CPU and
    CUDA kernel when the extension is missing; ``cuda_kernel``: also its CUDA kernel when the extension is there
    (an op without a CUDA C++ kernel)."""
    _REFERENCES[op_name] = fn
    if not _extension.AVAILABLE:
        torch.library.impl(f"sparsecl::{op_name}", ("CPU", "CUDA"))(fn)
    elif cuda_kernel:
        torch.library.impl(f"sparsecl::{op_name}", "CUDA")(fn)


class KernelSet:
    """The kernels of one op family for a device: the dispatcher ops, or on CUDA their Triton twins or their
    pure-torch references (the "aten" backend), as ``sparsecl.backend.gpu_backend`` chooses.

    specs: one (dispatcher op name, launcher name in ``sparsecl.kernels.<module>``, mutated args) per op.
    Each launcher becomes the op ``sparsecl::<name>_triton`` (``<name>_triton_`` for mutating ``<name>_``).
    They are registered at import where a GPU is visible (never in the middle of a torch.compile
    trace), else on first use. Calling the set with a device returns the op callables, in spec order.
    """

    def __init__(self, op, module, specs):
        self.op, self.module, self.specs = op, module, specs
        self._triton = None
        if torch.cuda.is_available() and triton_available():
            self._register_triton()

    def _register_triton(self):
        launchers = importlib.import_module(f"sparsecl.kernels.{self.module}")
        self._triton = tuple(
            torch.library.triton_op(f"sparsecl::{name[:-1] + '_triton_' if name.endswith('_') else name + '_triton'}",
                                    getattr(launchers, launcher), mutates_args=mutates)
            for name, launcher, mutates in self.specs)

    def __call__(self, device, **shape_class):
        """The op callables for ``device``; ``shape_class`` (dtype, density, block, tokens) feeds "auto"."""
        backend = gpu_backend(self.op, device, **shape_class)
        if backend == "triton":
            if self._triton is None:
                self._register_triton()
            return self._triton
        if backend == "aten":
            return tuple(_REFERENCES[name] for name, _, _ in self.specs)
        return tuple(getattr(torch.ops.sparsecl, name) for name, _, _ in self.specs)


def autocast_args(x, *tensors):
    """Cast float tensors to the CUDA autocast dtype when autocast is on (custom ops are not autocast)."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in (x, *tensors))
    return (x, *tensors)


# op name -> KernelSet of the indexed-linear Functions: reached through a module global, not a closure,
# so torch.compile can trace it
_INDEXED_KERNELS = {}


def check_dense_grad_hook(hook):
    if hook is not None and not callable(hook):
        raise TypeError(f"dense_grad_hook must be callable or None, got {type(hook).__name__}")


def hook_dense_grad(dense_grad_hook, grad_out, x):
    """The dense dW = grad_out.T @ x [out, in], handed to ``dense_grad_hook`` (which may keep it) and returned."""
    dense = grad_out.T.mm(x)
    dense_grad_hook(dense)
    return dense


def _shape_class(x, values, out_features, blocked):
    """What backend "auto" keys on (sparsecl.backend.auto_backend): x [T, in], values of an [out, in] weight."""
    return dict(dtype=x.dtype, density=weight_density(values, (out_features, x.shape[1])),
                block=values.shape[1] if blocked else None, tokens=x.shape[0])


def indexed_linear_function(kernels, name, pass_block_size):
    """The autograd Function of ``x @ W.T + bias`` over an indexed sparse layout (CSR or BSR).

    ``kernels(device)`` gives (forward, dx, dw). Inputs: x [T, in], values, bias or None, the layout's six
    index tensors (row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm), out_features and a dense-gradient
    hook or None. dX runs over the transposed index, dValues only at the active entries (dw also gets the block
    size, values.shape[1], when ``pass_block_size``), dBias is grad_out summed over tokens. With a hook (a DST
    growth step needs the dense weight gradient anyway), backward computes the dense dW with one GEMM, passes
    it to the hook and gathers dValues from it instead of running the SDDMM.
    """

    op = kernels.op
    _INDEXED_KERNELS[op] = kernels

    class IndexedLinear(torch.autograd.Function):
        @staticmethod
        def forward(x, values, bias, layout_tensors, out_features, dense_grad_hook):
            row_ptr, col_idx = layout_tensors[0], layout_tensors[1]
            kernels = _INDEXED_KERNELS[op](x.device, **_shape_class(x, values, out_features, pass_block_size))
            return kernels[0](x, values, row_ptr, col_idx, out_features, bias)

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, values, bias, layout_tensors, _, dense_grad_hook = inputs
            ctx.save_for_backward(x, values, *layout_tensors)
            ctx.has_bias = bias is not None
            ctx.dense_grad_hook = dense_grad_hook

        @staticmethod
        def backward(ctx, grad_out):
            x, values, row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = ctx.saved_tensors
            _, dx_op, dw_op = _INDEXED_KERNELS[op](
                x.device, **_shape_class(x, values, grad_out.shape[1], pass_block_size))
            grad_out = grad_out.contiguous()
            dx = dv = db = None
            if ctx.needs_input_grad[0]:
                dx = dx_op(grad_out, values, t_row_ptr, t_col_idx, t_perm, x.shape[1])
            block = values.shape[1] if pass_block_size else 1
            if ctx.dense_grad_hook is not None:
                dense = hook_dense_grad(ctx.dense_grad_hook, grad_out, x)
                if ctx.needs_input_grad[1]:
                    dv = entries_at(dense, row_idx, col_idx, block).to(values.dtype)
            elif ctx.needs_input_grad[1]:
                dv = dw_op(grad_out, x, row_idx, col_idx, *((block,) if pass_block_size else ()))
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = grad_out.sum(0)
            return dx, dv, db, None, None, None

    IndexedLinear.__name__ = IndexedLinear.__qualname__ = name
    return IndexedLinear


def indexed_linear(function, layout_type, x, values, layout, bias, dense_grad_hook=None):
    """Shared body of bsr_linear / csr_linear: validate, autocast, flatten the leading dims of x, apply."""
    if not isinstance(layout, layout_type):
        raise TypeError(f"layout must be a {layout_type.__name__}, got {type(layout).__name__}")
    out_f, in_f = layout.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"x has {x.shape[-1]} input features but the layout expects {in_f}")
    if not torch.compiler.is_compiling():
        layout.check_values(values)
        if values.device != x.device or layout.device != x.device:
            raise ValueError(f"x ({x.device}), values ({values.device}) and layout ({layout.device}) "
                             "must be on one device")
    x, values, bias = autocast_args(x, values, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), in_f)  # explicit rows: in_features may be 0
    idx = (layout.row_ptr, layout.col_idx, layout.row_idx, layout.t_row_ptr, layout.t_col_idx, layout.t_perm)
    check_dense_grad_hook(dense_grad_hook)
    y = function.apply(x2, values, bias, idx, out_f, dense_grad_hook)
    return y.reshape(*lead, out_f)
