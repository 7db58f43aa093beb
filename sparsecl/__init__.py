"""sparsecl: sparse and width-sliced kernels that really compute sparsely, and the trainers on them."""
from . import ops  # noqa: F401  (registers schemas, then kernels)
from . import _extension  # noqa: F401
from .backend import get_backend, set_backend, use_backend
from .dispatch import dispatch_report, get_dispatch, set_dispatch, use_dispatch
from .formats import BlockSparseLayout, CSRLayout
from . import nn  # noqa: F401
from .sparsify import sparsify
from .info import build_info

__version__ = "0.1.0"

__all__ = ["BlockSparseLayout", "CSRLayout", "build_info", "dispatch_report", "get_backend", "get_dispatch", "set_backend",
           "set_dispatch", "sparsify", "use_backend", "use_dispatch", "__version__"]
