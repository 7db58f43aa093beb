"""Compatibility import: the checkpoint format moved to ``sparsecl.checkpoint`` (both trainers use it)."""
from ..checkpoint import (FORMAT, VERSION, CheckpointError, load_checkpoint, pack_bool, save_checkpoint, seal,
                          unpack_bool, unseal)

__all__ = ["FORMAT", "VERSION", "CheckpointError", "load_checkpoint", "pack_bool", "save_checkpoint", "seal",
           "unpack_bool", "unseal"]
