"""sparsecl ops: torch.library custom ops with fakes, autograd and per-device kernels."""
from . import _schemas  # noqa: F401  (schemas first, then the kernels that implement them)
from .. import _extension  # noqa: F401
from .bsr_linear import bsr_linear
from .csr_linear import csr_linear
from .dense_or_sparse import dense_or_sparse
from .masked_linear import masked_linear, masked_linear_dense_grad
from .prune_regrow import prune_regrow, random_scores
from .slimmable import slimmable_conv2d, slimmable_linear, slimmable_linear_multi
from .sparse_conv2d import bsr_conv2d, csr_conv2d
from .union import union_conv2d, union_linear

__all__ = ["bsr_linear", "csr_linear", "dense_or_sparse", "masked_linear", "masked_linear_dense_grad", "prune_regrow",
           "random_scores",
           "slimmable_conv2d", "slimmable_linear", "slimmable_linear_multi",
           "bsr_conv2d", "csr_conv2d", "union_conv2d", "union_linear"]
