"""The csr_linear / masked_linear Triton kernels compile for sm_90 (Hopper) without a GPU.

The interpreter runs the kernels as Python, so it cannot catch compiled-mode failures (loop-carried
types, lowering limits such as Triton's fp64 MMA assertion). This compiles one variant per dtype
class of each kernel ahead of time with tests/ops/_triton_sm90_check.compile_sm90, in a subprocess
because the interpreter flag is process-wide.
"""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {here!r})
    from _triton_sm90_check import compile_sm90
    from sparsecl.kernels import csr_linear as C, masked_linear as M

    for dt in ("fp16", "fp64"):
        fp64 = dt == "fp64"
        acc = "*fp64" if fp64 else "*fp32"
        compile_sm90(C._spmm_merge, dict(HAS_PERM=True, FP64=fp64, NNZ_PER_PROG=1024, NZ=32, BLOCK_T=128),
                     "*" + dt, 4, 1, types=dict(out_ptr=acc))
        compile_sm90(C._sddmm, dict(FP64=fp64, NZ=32, BLOCK_T=128), "*" + dt, 4, 1,
                     types=dict(row_ptr="*i32", col_ptr="*i32"))
        cfg = M._FP64_META if fp64 else M.CONFIGS[1].kwargs
        compile_sm90(M._masked_mm, dict(B_MASK=True, C_MASK=True, HAS_BIAS=True, FP64=fp64, PRECISION="ieee", **cfg),
                     "*" + dt, 4, 3, types=dict(bm_ptr="*u8", cm_ptr="*u8"))
    print("compiled")
''')


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton.compiler")
    script = SCRIPT.format(here=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
