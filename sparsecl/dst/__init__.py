"""Dynamic sparse training: RigL/ER/ERK layer densities, prune and growth criteria, drop-fraction
schedules, and the DST engine built on the fused ``sparsecl.ops.prune_regrow``."""
from .criteria import drop_fraction_at
from .densities import layer_densities
from .engine import DST, is_dst_layer

__all__ = ["DST", "drop_fraction_at", "is_dst_layer", "layer_densities"]
