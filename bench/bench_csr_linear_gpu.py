"""GPU only: csr_linear (Triton and CUDA C++) fp16 against cuBLAS dense F.linear and torch.sparse CSR at
d=0.1, and masked_linear (Triton and CUDA C++) at d=0.5 against dense, on LLaMA-7B MLP shapes
(4096 -> 11008) with T=16 (decode) and T=4096 (prefill/training). Yields nothing on CPU.

Bar (issue 3): csr_linear fp16 d=0.1 faster than cuBLAS dense on both shapes. "speedup" is dense time over
method time measured in the same run; "eff" is achieved GFLOP/s at the active density over dense GFLOP/s.
The launchers and ops are called directly (x @ W.T without autograd), so the rows time the kernels alone.
"""
import torch
import torch.nn.functional as F

try:
    from .harness import measure
except ImportError:  # run by pytest from the bench/ folder
    from harness import measure

SHAPES = {"llama-mlp-T16": (16, 4096, 11008), "llama-mlp-T4096": (4096, 4096, 11008)}
CSR_DENSITY = 0.1
MASKED_DENSITY = 0.5
DTYPE = torch.float16


def _case(shape_name, density, seed=0):
    T, in_f, out_f = SHAPES[shape_name]
    g = torch.Generator(device="cuda").manual_seed(seed)
    mask = torch.rand(out_f, in_f, generator=g, device="cuda") < density
    w = torch.randn(out_f, in_f, generator=g, device="cuda").to(DTYPE) * mask
    x = torch.randn(T, in_f, generator=g, device="cuda").to(DTYPE)
    gy = torch.randn(T, out_f, generator=g, device="cuda").to(DTYPE)
    return x, w, mask, gy


def _csr_methods(x, w, mask, gy, quick):
    from sparsecl.kernels.csr_linear import csr_index, csr_linear_dw, csr_linear_dx, csr_linear_forward

    out_f, in_f = w.shape
    row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = csr_index(mask)
    values = w[mask].contiguous()
    ops = torch.ops.sparsecl
    fwd = {"sparsecl csr triton": lambda: csr_linear_forward(x, values, row_ptr, col_idx, out_f, None),
           "sparsecl csr cuda": lambda: ops.csr_linear(x, values, row_ptr, col_idx, out_f, None)}
    w_csr = w.to_sparse_csr()
    xt = x.T.contiguous()
    fwd["torch.sparse csr"] = lambda: torch.sparse.mm(w_csr, xt)
    methods = {"fwd": fwd}
    if not quick:
        methods["dx"] = {
            "sparsecl csr triton": lambda: csr_linear_dx(gy, values, t_row_ptr, t_col_idx, t_perm, in_f),
            "sparsecl csr cuda": lambda: ops.csr_linear_dx(gy, values, t_row_ptr, t_col_idx, t_perm, in_f)}
        methods["dw"] = {"sparsecl csr triton": lambda: csr_linear_dw(gy, x, row_idx, col_idx),
                         "sparsecl csr cuda": lambda: ops.csr_linear_dw(gy, x, row_idx, col_idx)}
    return methods


def _masked_methods(x, w, mask, gy, quick):
    from sparsecl.kernels.masked_linear import masked_linear_dw, masked_linear_dx, masked_linear_forward

    ops = torch.ops.sparsecl
    methods = {"fwd": {"sparsecl masked triton": lambda: masked_linear_forward(x, w, mask, None),
                       "sparsecl masked cuda": lambda: ops.masked_linear(x, w, mask, None)}}
    if not quick:
        methods["dx"] = {"sparsecl masked triton": lambda: masked_linear_dx(gy, w, mask),
                         "sparsecl masked cuda": lambda: ops.masked_linear_dx(gy, w, mask)}
        methods["dw"] = {"sparsecl masked triton": lambda: masked_linear_dw(gy, x, mask),
                         "sparsecl masked cuda": lambda: ops.masked_linear_dw(gy, x, mask)}
    return methods


def rows(quick=False, device="cpu"):
    """Yield one result dict per (shape, op, pass, method); nothing unless device is CUDA (Triton imported lazily)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return
    import sparsecl  # noqa: F401  (loads the extension: registers the CUDA kernels)

    min_time = 0.3 if quick else 1.0
    for shape_name in SHAPES:
        T, in_f, out_f = SHAPES[shape_name]
        flops = 2.0 * T * in_f * out_f
        for op, density, make in (("csr_linear", CSR_DENSITY, _csr_methods),
                                  ("masked_linear", MASKED_DENSITY, _masked_methods)):
            x, w, mask, gy = _case(shape_name, density)
            dense = {"fwd": lambda: F.linear(x, w), "dx": lambda: gy @ w, "dw": lambda: gy.T @ x}
            base = dict(op=op, shape=shape_name, T=T, in_f=in_f, out_f=out_f, dtype=str(DTYPE).replace("torch.", ""))
            for pass_, candidates in make(x, w, mask, gy, quick).items():
                t_dense = measure(dense[pass_], device, min_time)
                yield dict(base, method="dense cuBLAS", density=1.0, pass_=pass_, ms=t_dense * 1e3, speedup=1.0,
                           gflops=flops / t_dense / 1e9, eff=1.0)
                for method, fn in candidates.items():
                    try:
                        t = measure(fn, device, min_time)
                    except (RuntimeError, NotImplementedError) as e:  # e.g. torch.sparse without fp16 CSR
                        yield dict(base, method=method, density=density, pass_=pass_, error=str(e)[:200])
                        continue
                    useful = density * flops if op == "csr_linear" else flops
                    yield dict(base, method=method, density=density, pass_=pass_, ms=t * 1e3, speedup=t_dense / t,
                               gflops=useful / t / 1e9, eff=density * flops / t / (flops / t_dense))
            del x, w, mask, gy
            torch.cuda.empty_cache()


CASES = [dict(id=s, shape=s) for s in SHAPES]


def test_csr_linear_cuda_forward(benchmark, case):
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from sparsecl.kernels.csr_linear import csr_index

    x, w, mask, _ = _case(case["shape"], CSR_DENSITY)
    row_ptr, col_idx = csr_index(mask)[:2]
    values = w[mask].contiguous()
    benchmark(lambda: (torch.ops.sparsecl.csr_linear(x, values, row_ptr, col_idx, w.shape[0], None),
                       torch.cuda.synchronize()))
