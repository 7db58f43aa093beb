"""Static performance gates on the Triton kernels ``backend="auto"`` may run on CUDA (no GPU needed).

Compiles each variant for sm_90a at the bar shape with a real launch's constexprs (tests/gpu_static/
_triton_gates.py, in a subprocess because conftest sets TRITON_INTERPRET=1) and checks wgmma, a >= 3 deep
main-loop pipeline with a load in flight across the in-loop wait, no local memory or spills, and vectorised
epilogue stores (sm90.triton_gate_failures). The checkers themselves are tested on the old kernel shape
(index loaded in the same iteration), which Triton pipelined only two tiles deep.
"""
import json
import os
import subprocess
import sys

import pytest

from sparsecl.backend import AUTO_RULES

from . import sm90

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(sm90.nvidia_bin("ptxas") is None, reason="ptxas not found (triton nvidia backend)")


def _run(script, *args):
    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def results():
    return _run(os.path.join(HERE, "_triton_gates.py"))


def test_auto_chooses_only_gated_triton_kernels():
    # the gate script covers exactly auto's sparse classes; a new rule needs its kernels added there
    assert [(r.op, r.backend, r.blocks) for r in AUTO_RULES] == [("bsr_linear", "triton", (64,))]


def test_every_autotune_config_passes_every_gate(results):
    from sparsecl.kernels import bsr_linear as k

    assert len(results) == 2 * len(k.GATHER_CONFIGS) + len(k.SDDMM_CONFIGS)
    failures = [f for r in results for f in r["failures"]]
    assert not failures, "\n".join(failures)


SAME_ITERATION_INDEX = '''
import os, sys, json
os.environ["TRITON_INTERPRET"] = "0"
sys.path[:0] = [{here!r}, {ops!r}]
import triton, triton.language as tl
from _triton_sm90_check import compile_sm90
from sm90 import triton_gate_failures, triton_report

@triton.jit
def gather(a_ptr, w_ptr, out_ptr, ptr_ptr, idx_ptr, stride_at, B: tl.constexpr, BLOCK_T: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_b = tl.arange(0, B)
    acc = tl.zeros((BLOCK_T, B), dtype=tl.float32)
    for j in range(tl.load(ptr_ptr), tl.load(ptr_ptr + 1)):
        k0 = tl.load(idx_ptr + j) * B  # the tile loads wait on this index load
        a = tl.load(a_ptr + offs_t[:, None] * stride_at + (k0 + offs_b)[None, :])
        w = tl.load(w_ptr + j * B * B + offs_b[:, None] * B + offs_b[None, :])
        acc = tl.dot(a, w, acc)
    tl.store(out_ptr + offs_t[:, None] * B + offs_b[None, :], acc.to(tl.bfloat16))

for stages in (3, 4):
    rep = triton_report(compile_sm90(gather, dict(B=64, BLOCK_T=128), "*bf16", 4, stages, ints=dict(stride_at=4096)))
    print(json.dumps(dict(name=f"stages={{stages}}", report=rep, failures=triton_gate_failures("old", rep))))
'''


def test_gates_fail_on_a_shallow_pipeline(tmp_path):
    """The kernel shape before the index prefetch: Triton 3.8 gives it 2 buffers and waits with num=0."""
    script = tmp_path / "old.py"
    script.write_text(SAME_ITERATION_INDEX.format(here=HERE, ops=os.path.join(HERE, "..", "ops")))
    for r in _run(str(script)):
        assert r["report"]["wgmma"] > 0
        assert any("buffer depth" in f for f in r["failures"]) or any("async_wait" in f for f in r["failures"]), r
