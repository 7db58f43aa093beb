"""The csr_linear / masked_linear Triton kernels compile for sm_90 (Hopper) without a GPU.

The interpreter runs the kernels as Python, so it cannot catch compiled-mode failures (loop-carried
types, lowering limits such as Triton's fp64 MMA assertion). This compiles one variant per dtype
class of each kernel ahead of time, in a subprocess because the interpreter flag is process-wide.
"""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sparsecl.kernels import csr_linear as C, masked_linear as M

    target = GPUTarget("cuda", 90, 32)

    def compile_(fn, sig, consts, **opts):
        sig = dict(sig, **{k: "constexpr" for k in consts})
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options=opts)

    I = "i32"
    for dt in ("fp16", "fp64"):
        acc = "fp64" if dt == "fp64" else "fp32"
        compile_(C._spmm_merge, dict(x_ptr="*" + dt, v_ptr="*" + dt, out_ptr="*" + acc, ptr_ptr="*i32", idx_ptr="*i32",
                                     perm_ptr="*i32", n_tokens=I, n_rows=I, nnz=I, stride_xt=I, stride_xk=I,
                                     stride_ot=I, stride_on=I),
                 dict(HAS_PERM=True, FP64=dt == "fp64", NNZ_PER_PROG=1024, NZ=32, BLOCK_T=128), num_warps=4)
        compile_(C._sddmm, dict(g_ptr="*" + dt, x_ptr="*" + dt, out_ptr="*" + dt, row_ptr="*i32", col_ptr="*i32",
                                n_tokens=I, nnz=I, stride_gt=I, stride_gn=I, stride_xt=I, stride_xk=I),
                 dict(FP64=dt == "fp64", NZ=32, BLOCK_T=128), num_warps=4)
        cfg = M._FP64_META if dt == "fp64" else M.CONFIGS[1].kwargs
        strides = {s: I for s in "s_am s_ak s_bk s_bn s_mk s_mn s_cmm s_cmn s_cm s_cn".split()}
        compile_(M._masked_mm, dict(a_ptr="*" + dt, b_ptr="*" + dt, bm_ptr="*u8", cm_ptr="*u8", bias_ptr="*" + dt,
                                    c_ptr="*" + dt, M=I, N=I, K=I, m_bucket=I, **strides),
                 dict(B_MASK=True, C_MASK=True, HAS_BIAS=True, FP64=dt == "fp64", PRECISION="ieee", **cfg),
                 num_warps=4, num_stages=3)
    print("compiled")
''')


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode and "ImportError" in proc.stderr and "GPUTarget" in proc.stderr:
        pytest.skip("this triton has no ahead-of-time compile API")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
