"""Shared plumbing for op modules: reference fallbacks, Triton registration and autocast."""
import importlib

import torch

from .. import _extension
from ..backend import use_triton
from ..kernels_loader import triton_available


def register_reference(op_name, fn):
    """Use ``fn`` (pure torch) as the CPU and CUDA kernel of ``sparsecl::op_name`` when the extension is missing."""
    if not _extension.AVAILABLE:
        torch.library.impl(f"sparsecl::{op_name}", ("CPU", "CUDA"))(fn)


class KernelSet:
    """The kernels of one op family for a device: the dispatcher ops, or their Triton twins on CUDA.

    specs: one (dispatcher op name, launcher name in ``sparsecl.kernels.<module>``, mutated args) per op.
    Each launcher becomes the op ``sparsecl::<name>_triton`` (``<name>_triton_`` for mutating ``<name>_``).
    They are registered at import where a GPU is visible (never in the middle of a torch.compile
    trace), else on first use. Calling the set with a device returns the op callables, in spec order.
    """

    def __init__(self, op, module, specs):
        self.op, self.module, self.specs = op, module, specs
        self._triton = None
        if torch.cuda.is_available() and triton_available():
            self._register_triton()

    def _register_triton(self):
        launchers = importlib.import_module(f"sparsecl.kernels.{self.module}")
        self._triton = tuple(
            torch.library.triton_op(f"sparsecl::{name[:-1] + '_triton_' if name.endswith('_') else name + '_triton'}",
                                    getattr(launchers, launcher), mutates_args=mutates)
            for name, launcher, mutates in self.specs)

    def __call__(self, device):
        if use_triton(self.op, device):
            if self._triton is None:
                self._register_triton()
            return self._triton
        return tuple(getattr(torch.ops.sparsecl, name) for name, _, _ in self.specs)


def autocast_args(x, *tensors):
    """Cast float tensors to the CUDA autocast dtype when autocast is on (custom ops are not autocast)."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in (x, *tensors))
    return (x, *tensors)
