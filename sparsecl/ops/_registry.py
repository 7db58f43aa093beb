"""Shared plumbing for op modules: reference fallbacks, Triton registration and autocast."""
import torch

from .. import _extension
from ..kernels_loader import triton_available


def register_reference(op_name, fn):
    """Use ``fn`` (pure torch) as the CPU and CUDA kernel of ``sparsecl::op_name`` when the extension is missing."""
    if not _extension.AVAILABLE:
        torch.library.impl(f"sparsecl::{op_name}", ("CPU", "CUDA"))(fn)


def triton_op(name, launcher, mutates_args=()):
    """Register ``launcher`` as the op ``sparsecl::name`` (Triton, for CUDA tensors); None without Triton."""
    if not triton_available():
        return None
    return torch.library.triton_op(f"sparsecl::{name}", launcher, mutates_args=mutates_args)


def autocast_args(x, *tensors):
    """Cast float tensors to the CUDA autocast dtype when autocast is on (custom ops are not autocast)."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in (x, *tensors))
    return (x, *tensors)
