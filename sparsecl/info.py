"""What this installation of sparsecl was built with and can run, and where its dispatch cache is."""
import platform

import torch

from . import _extension
from .kernels_loader import triton_available


def cpu_model():
    """The CPU's model name (/proc/cpuinfo "model name", else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == "model name":
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_isa():
    """The ISA the CPU kernels dispatch to ("avx512", "avx2", "generic"; SPARSECL_CPU_ISA forces a lower one), or
    None without the extension."""
    return _extension._C.build_info().get("cpu_isa_runtime") if _extension.AVAILABLE else None


def build_info():
    """Dict: extension status, compiled CPU ISAs and CUDA archs, runtime ISA, torch/triton/python versions, the
    dispatch mode and this machine's dispatch cache (path and entries: key -> per-direction choice)."""
    from . import dispatch

    info = {
        "sparsecl_extension": _extension.AVAILABLE,
        "extension_error": _extension.LOAD_ERROR,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
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
    cache = dispatch.cache_info()
    info["dispatch_mode"] = cache["mode"]
    info["dispatch_cache"] = cache["path"] + ("" if cache["exists"] else " (not written yet)")
    if "error" in cache:
        info["dispatch_cache_error"] = cache["error"]
    info["dispatch_cache_entries"] = {k: " ".join(f"{d}={e[d]}" for d in dispatch.DIRECTIONS)
                                      for k, e in cache["entries"].items()}
    return info
