"""Compile every Triton kernel that ``backend="auto"`` may run on CUDA, for sm_90a at the bar shapes with a
real launch's constexprs and integer specialisation, and print one JSON line per variant:
{"name", "report" (sm90.triton_report), "failures" (sm90.triton_gate_failures)}.
Run in a subprocess by test_triton_gates.py (the compiler must not run under TRITON_INTERPRET=1).

Auto's only sparse class is bsr_linear bf16 B=64 (sparsecl.backend.AUTO_RULES), at the LLaMA-7B MLP
shape T=4096, 4096 -> 11008: the gather GEMM as forward (W_T) and as dX (transposed index), and the SDDMM,
each under every autotune config (the autotuner may pick any of them).
"""
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "ops")]

from _triton_sm90_check import compile_sm90  # noqa: E402
from sm90 import triton_gate_failures, triton_report  # noqa: E402

from sparsecl.kernels import bsr_linear as k  # noqa: E402

T, IN, OUT, B = 4096, 4096, 11008, 64


def variants():
    common = dict(B=B, EVEN_K=True, EVEN_N=True, FP64=False, PRECISION="tf32")  # _precision: tf32 for bf16
    for cfg in k.GATHER_CONFIGS:
        for w_t in (True, False):  # forward over row_ptr (with bias) / dX over the transposed index
            kf, nf = (IN, OUT) if w_t else (OUT, IN)
            ints = dict(n_tokens=T, k_feat=kf, n_feat=nf, n_blocks=nf // B, t_bucket=T, stride_at=kf, stride_ak=1,
                        stride_ot=nf)
            consts = dict(common, W_T=w_t, HAS_PERM=not w_t, HAS_BIAS=w_t, **cfg.kwargs)
            yield (f"bsr gather {'fwd' if w_t else 'dx'} {cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}",
                   k._gather_mm, consts, ints, cfg)
    for cfg in k.SDDMM_CONFIGS:
        ints = dict(n_tokens=T, out_f=OUT, in_f=IN, t_bucket=T, stride_gt=OUT, stride_go=1, stride_xt=IN, stride_xi=1)
        yield (f"bsr sddmm {cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}", k._sddmm,
               dict(B=B, FP64=False, PRECISION="tf32", **cfg.kwargs), ints, cfg)


def main():
    for name, kernel, consts, ints, cfg in variants():
        compiled = compile_sm90(kernel, consts, "*bf16", cfg.num_warps, cfg.num_stages, ints=ints)
        rep = triton_report(compiled)
        print(json.dumps(dict(name=name, report=rep, failures=triton_gate_failures(name, rep))), flush=True)


if __name__ == "__main__":
    main()
