"""Shared launch helper: wraps a Triton kernel for torch.compile when the tensors are on CUDA."""
import torch

try:
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # torch without triton_op support
    _wrap_triton = None


def launchable(kernel, device):
    """``kernel`` itself on CPU (interpreter), or ``wrap_triton(kernel)`` on CUDA so it traces."""
    if _wrap_triton is not None and torch.device(device).type == "cuda":
        return _wrap_triton(kernel)
    return kernel
