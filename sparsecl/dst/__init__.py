"""Dynamic sparse training: per-layer densities (and, later, criteria, schedules and the DST engine)."""
from .densities import layer_densities

__all__ = ["layer_densities"]
