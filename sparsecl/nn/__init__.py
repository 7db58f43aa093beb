"""Drop-in sparse and slimmable layers built on sparsecl.ops."""
from .block_sparse import BlockSparseLinear

__all__ = ["BlockSparseLinear"]
