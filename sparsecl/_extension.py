"""Loads the compiled extension ``sparsecl._C``.

Importing it registers the C++/CUDA kernels with the dispatcher. If it is missing or broken,
sparsecl still imports, warns once, and the ops fall back to pure-torch reference code.
SPARSECL_EXTENSION=/path/to/_C.so loads that build instead (``make asan`` points it at the ASan build).
"""
import os
import warnings

import torch  # noqa: F401  (loads libc10/libtorch before the extension)

try:
    if os.environ.get("SPARSECL_EXTENSION"):  # another build of _C, e.g. the ASan one of `make asan`
        import importlib.util
        import sys

        _spec = importlib.util.spec_from_file_location(__package__ + "._C", os.environ["SPARSECL_EXTENSION"])
        _C = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_C)
    else:
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
