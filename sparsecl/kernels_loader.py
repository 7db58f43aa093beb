"""Whether the Triton kernels in ``sparsecl.kernels`` can be used in this process."""
import functools


@functools.lru_cache(maxsize=None)
def triton_available():
    try:
        import triton  # noqa: F401

        from . import kernels  # noqa: F401
    except Exception:  # triton missing or incompatible with this torch
        return False
    import torch

    return hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")
