"""Static performance gates on the CUDA C++ kernels (no GPU needed).

Each csrc/cuda/*.cu is compiled once per source hash (cached under build/gpu_static, or SPARSECL_GATE_CACHE) with
``nvcc -cubin -arch=sm_90a -Xptxas -v`` and the flags of setup.py's build; SASS comes from triton's
``cuobjdump``. Gates (sm90.cuda_gate_failures): 0 spill bytes, tensor-core kernels load fragments with
LDSM (or use wgmma), no 64-bit integer division inside a loop.

Kernels ``backend="auto"`` may run on CUDA must pass every gate: prune_regrow (it has no other backend).
For auto, every linear/conv op runs dense ("aten") or Triton (sparsecl.backend), so the other CUDA C++
kernels run only when a user selects backend="cuda"; their gate status is pinned exactly in KNOWN_FAILURES,
so a fix or a regression both show up here.
"""
import glob
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from sparsecl.backend import AUTO_RULES

from . import sm90

pytestmark = pytest.mark.skipif(sm90.nvcc() is None or sm90.nvidia_bin("cuobjdump") is None,
                                reason="nvcc or cuobjdump not found (CUDA toolkit / triton nvidia backend)")

CU = sorted(glob.glob(os.path.join(sm90.ROOT, "csrc", "cuda", "*.cu")))
AUTO_CUDA_FILES = ("prune_regrow.cu",)

# (file, kernel name prefix) -> the gates its instantiations fail today (words of the failure messages);
# all only reachable with backend="cuda"
KNOWN_FAILURES = {
    ("bsr_linear.cu", "void gather_mm_tc<__nv_bfloat16,"): {"LDSM"},  # WMMA bf16 fragments via LD + MOVM
    ("bsr_linear.cu", "void sddmm_tc<__nv_bfloat16,"): {"LDSM"},
    ("csr_linear.cu", "void spmm_wide<double>"): {"spill"},
    ("masked_linear.cu", "void masked_mm_wmma<c10::BFloat16>"): {"LDSM"},
    ("sparse_conv2d.cu", "void block_gather_mm<"): {"spill", "64-bit"},  # int64 im2col index arithmetic
    ("sparse_conv2d.cu", "void block_dw<"): {"64-bit"},
    ("sparse_conv2d.cu", "void csr_fwd<"): {"64-bit"},
    ("sparse_conv2d.cu", "void csr_dx<"): {"spill", "64-bit"},
    ("sparse_conv2d.cu", "void csr_dw<"): {"64-bit"},
}


@pytest.fixture(scope="module")
def reports():
    """Per file: the kernel reports; files compile SPARSECL_GATE_JOBS at a time (default: up to 2 CPUs)."""
    pytest.importorskip("torch.utils.cpp_extension")
    jobs = int(os.environ.get("SPARSECL_GATE_JOBS", min(2, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return dict(zip((os.path.basename(p) for p in CU), pool.map(sm90.cuda_kernel_report, CU)))


def _failures(reports, files):
    return {(f, k): fails for f in files for k, rep in reports[f].items()
            for fails in [sm90.cuda_gate_failures(k, rep)] if fails}


def test_no_auto_rule_runs_cuda_cpp():
    assert all(r.backend != "cuda" for r in AUTO_RULES)


def test_kernels_auto_runs_pass_every_gate(reports):
    assert all(f in reports and reports[f] for f in AUTO_CUDA_FILES)
    fails = _failures(reports, AUTO_CUDA_FILES)
    assert not fails, "\n".join(m for ms in fails.values() for m in ms)


def _known(file, kernel):
    return next((gates for (f, prefix), gates in KNOWN_FAILURES.items() if f == file and kernel.startswith(prefix)),
                set())


def test_gate_status_of_the_backend_cuda_kernels_is_as_documented(reports):
    fails = _failures(reports, [f for f in reports if f not in AUTO_CUDA_FILES])
    unexpected = [m for (f, k), ms in fails.items() for m in ms if not any(g in m for g in _known(f, k))]
    assert not unexpected, "new gate failures:\n" + "\n".join(unexpected)
    for (f, prefix), gates in KNOWN_FAILURES.items():
        hits = [m for (ff, k), ms in fails.items() if ff == f and k.startswith(prefix) for m in ms]
        for gate in gates:
            assert any(gate in m for m in hits), f"{f} {prefix} now passes the {gate} gate: update KNOWN_FAILURES"


def test_gate_checkers_see_what_they_gate():
    """The parsers on known snippets: spill lines, loop-carried 64-bit division, SASS opcode counts."""
    log = ("ptxas info    : Compiling entry function 'k1' for 'sm_90a'\n"
           "    0 bytes stack frame, 32 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Compiling entry function 'k2' for 'sm_90a'\n"
           "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n")
    assert sm90.ptxas_spills(log) == {"k1": 40, "k2": 0}
    body = ["div.s64 %rd1, %rd2, %rd3;", "$L__BB0_1:", "rem.u64 %rd4, %rd5, %rd6;", "div.u32 %r1, %r2, %r3;",
            "@%p1 bra $L__BB0_1;", "div.u64 %rd7, %rd8, %rd9;"]
    assert sm90.div64_in_loops(body) == ["rem.u64 %rd4, %rd5, %rd6;"]
    from collections import Counter
    rep = dict(spill_bytes=0, sass=Counter(HMMA=4, LD=8, MOVM=4), div64_in_loops=[])
    assert "LDSM" in sm90.cuda_gate_failures("k", rep)[0] and "HMMA=4" in sm90.cuda_gate_failures("k", rep)[0]
    assert not sm90.cuda_gate_failures("k", dict(rep, sass=Counter(HMMA=4, LDSM=2)))
