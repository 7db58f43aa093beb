"""Backend choice for ops that have several GPU implementations (CUDA C++ and Triton).

CPU tensors always use the C++ CPU kernels (or the reference code when the extension is
missing). For CUDA tensors the backend is, per op or globally:
  "auto"   the measured-fastest default for that op (``AUTO_DEFAULTS``),
  "cuda"   the CUDA C++ kernels of ``sparsecl._C``,
  "triton" the Triton kernels in ``sparsecl.kernels``.
The choice is read when an op is called (at trace time under torch.compile).
"""
import contextlib
import threading

BACKENDS = ("auto", "cuda", "triton")

# GPU default per op under "auto": "cuda" unless the Triton kernels were faster in most rows of the
# GPU benchmark (bench/results/gpu-h100-2026-11-25: masked_linear 9.2 vs 103 ms summed over its rows,
# unstructured conv 384 vs 431 ms). bsr_linear, csr_linear and block conv measured faster on "cuda".
AUTO_DEFAULTS = {"masked_linear": "triton", "csr_conv2d": "triton"}

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


def use_triton(op, device):
    """True when ``op`` on ``device`` should run its Triton implementation rather than the dispatcher's."""
    from . import _extension
    from .kernels_loader import triton_available

    if device.type != "cuda":
        return False
    name = get_backend(op)
    if name == "auto":
        name = AUTO_DEFAULTS.get(op, "cuda")
    if name == "cuda" and not _extension.HAS_CUDA_KERNELS:
        name = "triton"
    return name == "triton" and triton_available()
