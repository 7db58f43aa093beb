"""Backend choice for ops that have several GPU implementations (CUDA C++, Triton, ATen).

CPU tensors always use the C++ CPU kernels (or the reference code when the extension is
missing). For CUDA tensors the backend is, per op or globally:
  "auto"   the measured-fastest default for that op (``AUTO_DEFAULTS``),
  "cuda"   the CUDA C++ kernels of ``sparsecl._C``,
  "triton" the Triton kernels in ``sparsecl.kernels``,
  "aten"   the op's plain PyTorch formulation, its reference kernel (masked_linear: cuBLAS on
           ``weight * mask``; the sparse ops: dense GEMM/conv on the densified weight).
The choice is read when an op is called (at trace time under torch.compile).
"""
import contextlib
import threading

BACKENDS = ("auto", "cuda", "triton", "aten")

# GPU default per op under "auto", from the H100 benchmark (bench/results/gpu-h100-2026-11-25): masked_linear
# on cuBLAS with the masked weight (fwd 0.49 ms vs Triton 2.19 and CUDA C++ 34 ms at 4096x4096, T=4096),
# unstructured conv on Triton (384 vs 431 ms summed over its rows); bsr_linear, csr_linear and block conv
# measured faster on "cuda", the default where an op has no entry.
AUTO_DEFAULTS = {"masked_linear": "aten", "csr_conv2d": "triton"}

_state = threading.local()


def _table():
    if not hasattr(_state, "table"):
        _state.table = {}
    return _state.table


def set_backend(name, op=None):
    """Select the GPU backend for ``op`` (e.g. "bsr_linear"), or the global default when op is None."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    _table()[op] = name


def get_backend(op=None):
    """The backend selected for ``op``: its own choice, else the global one, else "auto"."""
    table = _table()
    return table.get(op, table.get(None, "auto"))


@contextlib.contextmanager
def use_backend(name, op=None):
    """``with use_backend("triton"):`` selects a backend for the block and restores the previous choice."""
    saved = dict(_table())
    set_backend(name, op)
    try:
        yield
    finally:
        _state.table = saved


def gpu_backend(op, device):
    """The backend ``op`` runs on for ``device``: "cuda", "triton" or "aten"; None for CPU tensors."""
    from . import _extension
    from .kernels_loader import triton_available

    if device.type != "cuda":
        return None
    name = get_backend(op)
    if name == "auto":
        name = AUTO_DEFAULTS.get(op, "cuda")
    if name == "cuda" and not _extension.HAS_CUDA_KERNELS:
        name = "triton"
    if name == "triton" and not triton_available():
        name = "cuda"
    return name
