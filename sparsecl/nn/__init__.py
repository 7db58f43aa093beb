"""Drop-in sparse and slimmable layers built on sparsecl.ops."""
from .block_sparse import BlockSparseLinear
from .sparse_linear import SparseLinear

__all__ = ["BlockSparseLinear", "SparseLinear"]
