"""Loads the compiled extension ``sparsecl._C``.

Importing it registers the C++/CUDA kernels with the dispatcher. If it is missing or broken,
sparsecl still imports, warns once, and the ops fall back to pure-torch reference code.
"""
import warnings

import torch  # noqa: F401  (loads libc10/libtorch before the extension)

try:
    from . import _C  # noqa: F401
    LOAD_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"sparsecl: compiled extension not available ({LOAD_ERROR}); using slow pure-torch reference "
        "kernels. Build it with `pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=2,
    )

AVAILABLE = _C is not None
HAS_CUDA_KERNELS = AVAILABLE and bool(_C.build_info()["cuda"])
