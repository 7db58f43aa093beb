"""Compile sparsecl's Triton bsr_linear kernels for sm_90 without a GPU (run by a test in a subprocess,
because the compiler must not run under TRITON_INTERPRET=1). Prints one line per variant:
``name wgmma=<count> buffers=<main-loop buffer depth> loop_wait=<largest in-loop async_wait num>``; exits
non-zero if any variant fails to compile. tests/gpu_static gates the bf16 variants at the bar shape."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sparsecl.kernels import bsr_linear as k  # noqa: E402

INDEX = {"ptr_ptr", "idx_ptr", "perm_ptr", "row_idx_ptr", "col_idx_ptr"}


def compile_sm90(kernel, consts, dtype, warps, stages, types=None, ints=None):
    """Compile ``kernel`` for sm_90a as a launch would. Pointers get Triton's divisibility-by-16
    specialization (torch allocations are aligned). ``ints`` gives integer arguments their launch values and
    specializes them as Triton's launcher does: 1 becomes the constexpr 1, multiples of 16 get divisibility 16,
    other values none. Integers not in ``ints`` are taken as multiples of 16 (aligned shapes).
    ``types`` overrides the guessed type of named parameters (e.g. {"out_ptr": "*fp32"})."""
    sig, attrs, consts = {}, {}, dict(consts)
    for n, v in (ints or {}).items():
        if v == 1:
            consts[n] = 1
    for i, p in enumerate(kernel.params):
        if p.is_constexpr or p.name in consts:
            sig[p.name] = "constexpr"
            continue
        sig[p.name] = ("*i32" if p.name in INDEX else dtype) if p.name.endswith("_ptr") else "i32"
        sig[p.name] = (types or {}).get(p.name, sig[p.name])
        if sig[p.name].startswith("*") or (ints or {}).get(p.name, 16) % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {(kernel.arg_names.index(n),): v for n, v in consts.items()}
    return triton.compile(ASTSource(kernel, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))


def main():
    common = dict(stride_ak=1, B=64, EVEN_K=True, EVEN_N=True, FP64=False, GROUP=8)
    variants = []
    for cfg in (k.GATHER_CONFIGS[0], k.GATHER_CONFIGS[5]):  # one per tile orientation
        for w_t in (True, False):
            consts = dict(common, W_T=w_t, HAS_PERM=not w_t, HAS_BIAS=w_t, PRECISION="tf32", **cfg.kwargs)
            variants.append((f"gather bf16 w_t={w_t} {cfg.kwargs}", k._gather_mm, consts, "*bf16", cfg))
    cfg = k.SDDMM_CONFIGS[1]
    variants.append(("sddmm bf16", k._sddmm, dict(stride_go=1, stride_xi=1, B=64, FP64=False, PRECISION="tf32",
                                                  **cfg.kwargs), "*bf16", cfg))
    cfg = k.GATHER_CONFIGS[0]
    variants.append(("gather fp32 ieee edges", k._gather_mm, dict(common, EVEN_K=False, EVEN_N=False, W_T=True,
                     HAS_PERM=False, HAS_BIAS=True, PRECISION="ieee", **cfg.kwargs), "*fp32", cfg))
    # fp64: both tile orientations and the SDDMM (triton 3.6 asserts unless tl.dot gets out_dtype=fp64)
    for c in (k.GATHER_CONFIGS[0], k.GATHER_CONFIGS[5]):
        variants.append((f"gather fp64 {c.kwargs}", k._gather_mm, dict(common, FP64=True, W_T=False, HAS_PERM=True,
                         HAS_BIAS=False, PRECISION="ieee", **c.kwargs), "*fp64", c))
    cfg = k.SDDMM_CONFIGS[1]
    variants.append(("sddmm fp64", k._sddmm, dict(stride_go=1, stride_xi=1, B=64, FP64=True, PRECISION="ieee",
                                                  **cfg.kwargs), "*fp64", cfg))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu_static"))
    from sm90 import triton_report

    for name, kernel, consts, dtype, cfg in variants:
        r = triton_report(compile_sm90(kernel, consts, dtype, cfg.num_warps, cfg.num_stages))
        print(f"{name} wgmma={r['wgmma']} buffers={r['buffers']} loop_wait={max(r['loop_waits'], default=-1)}")


if __name__ == "__main__":
    sys.exit(main())
