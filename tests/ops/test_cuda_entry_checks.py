"""The CUDA C++ entry points reject bad input with a clear error, checked without a GPU.

Each case calls the op's CUDA kernel directly (``redispatch`` to the CUDA key) on CPU tensors that fail
a shape check before any device work. This runs the host code nvcc compiled, so it covers what
crashed on the H100 in the first GPU run (bench/results/gpu-h100-2026-11-25/NOTES.md): a check that
formatted an integer into its message. Skipped when the extension was built without CUDA kernels.
"""
import pytest
import torch

import sparsecl

I32 = torch.int32


def _bsr_case():
    x = torch.randn(3, 32)
    values = torch.randn(2, 16, 16)
    return x, values


CASES = {
    "bsr_linear": (lambda: (*_bsr_case(), torch.tensor([0, 1], dtype=I32), torch.tensor([0, 1], dtype=I32), 32, None),
                   r"row_ptr must have 3 entries, got 2"),
    "bsr_linear_dx": (lambda: (torch.randn(3, 32), torch.randn(2, 16, 16), torch.tensor([0, 2], dtype=I32),
                               torch.tensor([0, 1], dtype=I32), torch.tensor([0, 1], dtype=I32), 32),
                      r"t_row_ptr must have 3 entries, got 2"),
    "bsr_linear_dw": (lambda: (torch.randn(3, 32), torch.randn(3, 32), torch.tensor([0], dtype=I32),
                               torch.tensor([0], dtype=I32), 8),
                      r"block_size must be 16, 32 or 64, got 8"),
    "csr_linear": (lambda: (torch.randn(3, 8), torch.randn(4), torch.tensor([0, 1, 2, 3, 4, 4, 4], dtype=I32),
                            torch.tensor([0, 1, 2, 3], dtype=I32), 7, None),
                   r"row_ptr must have out_features \+ 1 = 8 entries, got 7"),
    "csr_linear_dx": (lambda: (torch.randn(3, 6), torch.randn(4), torch.tensor([0, 4], dtype=I32),
                               torch.tensor([0, 1, 2, 3], dtype=I32), torch.tensor([0, 1, 2, 3], dtype=I32), 8),
                      r"t_row_ptr must have in_features \+ 1 = 9 entries, got 2"),
    "masked_linear": (lambda: (torch.randn(3, 5), torch.randn(6, 8), torch.ones(6, 8, dtype=torch.bool), None),
                      r"x has 5 input features but weight expects 8"),
    "masked_linear_dx": (lambda: (torch.randn(3, 5), torch.randn(6, 8), torch.ones(6, 8, dtype=torch.bool)),
                         r"grad_out has 5 features but weight has 6"),
    "prune_regrow": (lambda: ([torch.randn(4, 5)] * 2, [torch.ones(4, 5, dtype=torch.bool)] * 2, [torch.rand(4, 5)] * 2,
                              [torch.rand(4, 5)] * 2, torch.tensor([1, 2, 3]), []),
                     r"counts must be int64 \[2\], got Long \[3\]"),
    "csr_conv2d": (lambda: (torch.randn(2, 3, 5, 5), torch.randn(4), torch.tensor([0, 2, 4], dtype=I32),
                            torch.tensor([0, 1, 2, 3], dtype=I32), 2, [3, 3], None, [0, 1], [1, 1], [1, 1]),
                   r"stride must be >= 1, got \[0, 1\]"),
    # a kernel that does not fit the input: the CUDA geometry used to compute one output row here
    "csr_conv2d:too_small": (lambda: (torch.randn(2, 3, 2, 2), torch.randn(4), torch.tensor([0, 2, 4], dtype=I32),
                                      torch.tensor([0, 1, 2, 3], dtype=I32), 2, [3, 3], None, [2, 2], [0, 0], [1, 1]),
                             r"input \[2, 3, 2, 2\] is too small for kernel 3x3"),
    "bsr_conv2d_dx": (lambda: (torch.randn(2, 16, 5, 5), torch.randn(1, 16, 16, 3, 3), torch.tensor([0, 1], dtype=I32),
                               torch.tensor([0], dtype=I32), torch.tensor([0], dtype=I32), [2, 16, 5],
                               [1, 1], [1, 1], [1, 1]),
                      r"x_shape must be \[N, C, H, W\], got \[2, 16, 5\]"),
}


@pytest.mark.skipif(not sparsecl.build_info().get("cuda"), reason="extension built without CUDA kernels")
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_entry_rejects_bad_input_with_its_numbers(name):
    make_args, message = CASES[name]
    op_name = name.split(":")[0]
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsecl::{op_name}", "CUDA")
    op = getattr(torch.ops.sparsecl, op_name).default
    with pytest.raises(RuntimeError, match=message):
        op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *make_args())
