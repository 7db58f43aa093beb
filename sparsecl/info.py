"""What this installation of sparsecl was built with and can run."""
import platform

import torch

from . import _extension
from .kernels_loader import triton_available


def build_info():
    """Dict: extension status, compiled CPU ISAs and CUDA archs, runtime ISA, torch/triton/python versions."""
    info = {
        "sparsecl_extension": _extension.AVAILABLE,
        "extension_error": _extension.LOAD_ERROR,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "triton": None,
        "triton_usable": triton_available(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if _extension.AVAILABLE:
        info.update(_extension._C.build_info())
    return info
