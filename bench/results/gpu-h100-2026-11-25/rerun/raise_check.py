"""Device diagnostic of 2026-11-25 (provenance): do C++ check failures in CUDA entry points raise or crash?"""
import faulthandler
import sys

import torch

import sparsecl

faulthandler.enable()
mode = sys.argv[1]
dev = "cuda"
x = torch.randn(3, 8, device=dev)
values = torch.randn(4, device=dev)
row_ptr = torch.tensor([0, 1, 2, 3, 4, 4, 4], dtype=torch.int32, device=dev)
col = torch.tensor([0, 1, 2, 3], dtype=torch.int32, device=dev)
w = torch.randn(6, 8, device=dev)
mask = torch.rand(6, 8, device=dev) < 0.5
if mode == "triton":
    from sparsecl.kernels.csr_linear import csr_linear_forward
    print("triton fwd", csr_linear_forward(x, values, row_ptr, col, 6, None).shape, flush=True)
if mode == "cuda_ok":
    print("cuda fwd", torch.ops.sparsecl.csr_linear(x, values, row_ptr, col, 6, None).shape, flush=True)
calls = [
    ("csr int64", lambda: torch.ops.sparsecl.csr_linear(x, values, row_ptr.long(), col, 6, None)),
    ("csr rows", lambda: torch.ops.sparsecl.csr_linear(x, values, row_ptr, col, 7, None)),
    ("csr device", lambda: torch.ops.sparsecl.csr_linear(x, values.cpu(), row_ptr, col, 6, None)),
    ("masked float mask", lambda: torch.ops.sparsecl.masked_linear(x, w, mask.float(), None)),
    ("masked features", lambda: torch.ops.sparsecl.masked_linear(x[:, :5], w, mask, None)),
    ("masked features contig", lambda: torch.ops.sparsecl.masked_linear(x[:, :5].contiguous(), w, mask, None)),
]
for rep in range(2):
    for name, fn in calls:
        print("call", name, flush=True)
        try:
            fn()
            print("  NO RAISE", flush=True)
        except Exception as e:
            print("  raised", type(e).__name__, str(e).splitlines()[0][:120], flush=True)
print("done", mode)
