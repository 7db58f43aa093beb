"""Masked dense linear: ``y = x @ (weight * mask).T + bias`` without materialising ``weight * mask``.

For moderate sparsity, where CSR does not pay. ``grad_mask`` (default ``mask``) selects which
positions receive weight gradient: in continual learning, frozen earlier-task weights are in ``mask``
(used in the forward) but not in ``grad_mask``. ``masked_linear_dense_grad`` gives the full dense
dW for gradient-based growth steps.
"""
import torch

from ._registry import KernelSet, autocast_args, check_dense_grad_hook, hook_dense_grad, register_reference

OP = "masked_linear"


# Pure-torch reference kernels (used only when the compiled extension is missing) -------------
def _reference_forward(x, weight, mask, bias):
    y = x @ torch.where(mask, weight, 0).T
    return y + bias if bias is not None else y


def _reference_dx(grad_out, weight, mask):
    return grad_out @ torch.where(mask, weight, 0)


def _reference_dw(grad_out, x, grad_mask):
    return (grad_out.T @ x).masked_fill(~grad_mask, 0)


register_reference("masked_linear", _reference_forward)
register_reference("masked_linear_dx", _reference_dx)
register_reference("masked_linear_dw", _reference_dw)


# (forward, dx, dw): dispatcher ops, or Triton ops for CUDA tensors when selected ------------
_kernels = KernelSet(OP, "masked_linear", [
    ("masked_linear", "masked_linear_forward", ()),
    ("masked_linear_dx", "masked_linear_dx", ()),
    ("masked_linear_dw", "masked_linear_dw", ()),
])


class _MaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, mask, bias, grad_mask, dense_grad_hook):
        return _kernels(x.device)[0](x, weight, mask, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, mask, bias, grad_mask, dense_grad_hook = inputs
        ctx.save_for_backward(x, weight, mask, grad_mask)
        ctx.has_bias = bias is not None
        ctx.dense_grad_hook = dense_grad_hook

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask, grad_mask = ctx.saved_tensors
        _, dx_op, dw_op = _kernels(x.device)
        grad_out = grad_out.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dx_op(grad_out, weight, mask)
        gm = mask if grad_mask is None else grad_mask
        if ctx.dense_grad_hook is not None:  # one GEMM gives both the dense dW and the masked one
            dense = hook_dense_grad(ctx.dense_grad_hook, grad_out, x)
            if ctx.needs_input_grad[1]:
                dw = torch.where(gm, dense, 0).to(weight.dtype)
        elif ctx.needs_input_grad[1]:
            dw = dw_op(grad_out, x, gm)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            db = grad_out.sum(0)
        return dx, dw, None, db, None, None


def _check(x, weight, mask, name):
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != weight.shape:
        raise ValueError(f"{name} shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} input features but weight expects {weight.shape[1]}")
    if not torch.compiler.is_compiling() and (weight.device != x.device or mask.device != x.device):
        raise ValueError(f"x ({x.device}), weight ({weight.device}) and {name} ({mask.device}) must be on one device")


def masked_linear(x, weight, mask, bias=None, grad_mask=None, *, dense_grad_hook=None):
    """``x @ (weight * mask).T + bias`` with weight [out, in] dense and bool mask [out, in]; masked-out
    weights contribute exactly 0 (also when they are inf/NaN).

    x: [..., in]; bias: [out] or None; grad_mask: bool [out, in] (default ``mask``): the positions that
    receive weight gradient (exactly 0 elsewhere). Returns [..., out]. Nothing is mutated.
    dense_grad_hook: None, or a callable that backward passes the dense weight gradient [out, in] over all
    positions (for DST growth); the masked dW is then taken from it (one GEMM instead of two).
    """
    check_dense_grad_hook(dense_grad_hook)
    _check(x, weight, mask, "mask")
    if grad_mask is mask:
        grad_mask = None
    if grad_mask is not None:  # None (= mask) is resolved in backward: apply() must not get one tensor twice
        _check(x, weight, grad_mask, "grad_mask")
        grad_mask = grad_mask.contiguous()
    x, weight, bias = autocast_args(x, weight, bias)
    out_f, in_f = weight.shape
    lead = x.shape[:-1]
    y = _MaskedLinear.apply(x.reshape(lead.numel(), in_f), weight, mask.contiguous(), bias, grad_mask,
                            dense_grad_hook)
    return y.reshape(*lead, out_f)


def masked_linear_dense_grad(x, grad_out):
    """Dense weight gradient ``grad_out.T @ x`` [out, in] over all positions (for growth steps).

    x: [..., in], grad_out: [..., out] with the same leading dims. Nothing is mutated.
    """
    if x.shape[:-1] != grad_out.shape[:-1]:
        raise ValueError(f"x {tuple(x.shape)} and grad_out {tuple(grad_out.shape)} must share leading dims")
    if x.dtype != grad_out.dtype:
        raise ValueError(f"x dtype {x.dtype} != grad_out dtype {grad_out.dtype}")
    rows = x.shape[:-1].numel()
    return grad_out.reshape(rows, grad_out.shape[-1]).T @ x.reshape(rows, x.shape[-1])
