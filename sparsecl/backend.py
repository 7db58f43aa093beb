"""Backend choice for ops that have several GPU implementations (CUDA C++, Triton, ATen).

CPU tensors always use the C++ CPU kernels (or the reference code when the extension is
missing). For CUDA tensors the backend is, per op or globally:
  "auto"   the measured-fastest path for the op and its shape class (``auto_backend``),
  "cuda"   the CUDA C++ kernels of ``sparsecl._C``,
  "triton" the Triton kernels in ``sparsecl.kernels``,
  "aten"   the op's plain PyTorch formulation, its reference kernel (masked_linear: cuBLAS on
           ``weight * mask``; the sparse ops: cuBLAS GEMM / cuDNN conv on the densified weight).
The choice is read when an op is called (at trace time under torch.compile).

What "auto" does on CUDA, per op (never slower than dense by design):
  The default is "aten", the dense path. A sparse kernel is chosen only for a shape class where the
  committed GPU measurement (bench/results/gpu-h100-2026-11-25, H100 80GB HBM3, torch 2.11, triton
  3.6) has it faster than that dense path for a whole training step (fwd+bwd), *and* the kernel passes
  every static performance gate (tests/gpu_static). Today that is one class (``AUTO_RULES``):
  * bsr_linear, bf16, B=64, density <= 0.1, >= 4096 tokens: "triton". Measured at LLaMA-7B MLP
    (T=4096, 4096->11008, d=0.1): fwd 0.447 ms vs cuBLAS 0.580, fwd+bwd 1.654 vs 1.693. The CUDA C++
    kernel measured faster (0.366 / 1.448) but fails the bf16 LDSM gate (WMMA bf16 fragments load
    through LD+MOVM), so auto does not take it. At d=0.2 fwd+bwd lost (2.34 / 2.18 vs 1.69): dense.
  * csr_linear: "aten". T=4096 fp16 d=0.1: best sparse fwd 11.9 ms vs cuBLAS 0.527; T=16: fwd won
    (0.038 vs 0.042) but dx+dW lost (0.73 vs 0.078 ms), so a training step is faster dense.
  * masked_linear: "aten" (cuBLAS on weight*mask). 4096^2 T=4096: 0.49 ms vs Triton 2.19, CUDA 34.
  * bsr_conv2d, csr_conv2d: "aten" (cuDNN). 256@14 and 512@7, batch 32, d=0.1: cuDNN 0.023-0.030 ms
    vs block 0.19-0.25 ms and unstructured 1.6-2.4 ms.
  * slimmable_linear (and its multi-width ops): "aten". T=512 4096 w=0.5 fwd+bwd: F.linear on the
    W[:o, :i] view 0.72 ms vs 1.07 ms for the Triton kernel.
  * prune_regrow has no backend choice (CUDA C++; measured 2.40 ms vs torch.topk 15.6 ms).
  Unmeasured classes (other dtypes, block sizes, densities, token counts) are dense until a GPU run
  measures them. Ops pass their shape class to ``gpu_backend``; a call without it gets the dense path.
  Static gates (tests/gpu_static): every Triton bsr_linear config passes all of them, and so does prune_regrow;
  the CUDA C++ kernels only reachable with backend="cuda" that fail some are listed, with the gate, in
  test_cuda_gates.KNOWN_FAILURES (bsr/masked bf16 WMMA: no LDSM; csr fp64 wide: spills; sparse conv: 64-bit
  division in loops, spills).
"""
import contextlib
import threading
from typing import NamedTuple, Optional

import torch

BACKENDS = ("auto", "cuda", "triton", "aten")


class AutoRule(NamedTuple):
    """A shape class where a sparse GPU kernel measured faster than dense (all fields must match)."""
    op: str
    backend: str
    dtypes: tuple
    blocks: tuple           # block sizes (BSR ops); () for element-granular ops
    max_density: float      # stored fraction of the dense weight, inclusive
    min_tokens: int         # rows of x (tokens, or batch x output pixels for conv)
    evidence: str           # the measurement it rests on


AUTO_RULES = (
    AutoRule("bsr_linear", "triton", (torch.bfloat16,), (64,), 0.1, 4096,
             "H100 2026-11-25, LLaMA-7B MLP T=4096 4096->11008 bf16 B=64 d=0.1: triton fwd 0.447 ms / "
             "fwd+bwd 1.654 ms vs cuBLAS 0.580 / 1.693 (bench/results/gpu-h100-2026-11-25/bench/bench-cuda.json)"),
)

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


def auto_backend(op, dtype=None, density=None, block=None, tokens=None):
    """What "auto" runs for ``op`` on CUDA at a shape class: the first matching ``AUTO_RULES`` entry's
    backend, else "aten" (dense). A pure function of its arguments; any of them None (unknown) -> "aten".

    dtype: the compute dtype; density: stored fraction of the dense weight (nnz / numel); block: BSR block
    size (None for element-granular ops); tokens: rows of the GEMM (x's leading dims flattened).
    """
    for rule in AUTO_RULES:
        if (rule.op == op and dtype in rule.dtypes and (not rule.blocks or block in rule.blocks)
                and density is not None and density <= rule.max_density
                and tokens is not None and tokens >= rule.min_tokens):
            return rule.backend
    return "aten"


def gpu_backend(op, device, dtype=None, density=None, block=None, tokens=None):
    """The backend ``op`` runs on for ``device``: "cuda", "triton" or "aten"; None for CPU tensors.

    The shape-class arguments are those of ``auto_backend`` and matter only under "auto". An explicit
    "cuda" falls back to "triton" without CUDA kernels, and "triton" to "cuda" without Triton.
    """
    from . import _extension
    from .kernels_loader import triton_available

    if device.type != "cuda":
        return None
    name = get_backend(op)
    if name == "auto":
        name = auto_backend(op, dtype, density, block, tokens)
    if name == "cuda" and not _extension.HAS_CUDA_KERNELS:
        name = "triton"
    if name == "triton" and not triton_available():
        name = "cuda" if _extension.HAS_CUDA_KERNELS else "aten"
    return name


def weight_density(values, shape):
    """Stored fraction of a dense [out, in(, ...)] weight for ``values`` (any layout): numel ratio, no sync."""
    total = 1
    for s in shape:
        total *= int(s)
    return values.numel() / total if total else 1.0


__all__ = ["AUTO_RULES", "AutoRule", "BACKENDS", "auto_backend", "get_backend", "gpu_backend", "set_backend",
           "use_backend", "weight_density"]
