"""sparsecl ops: torch.library custom ops with fakes, autograd and per-device kernels."""
from . import _schemas  # noqa: F401  (schemas first, then the kernels that implement them)
from .. import _extension  # noqa: F401
from .bsr_linear import bsr_linear
from .prune_regrow import prune_regrow

__all__ = ["bsr_linear", "prune_regrow"]
