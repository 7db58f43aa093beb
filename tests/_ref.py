"""Helpers shared by op tests: float64 references and tolerances."""
import torch

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-4, 2e-4), torch.float16: (2e-2, 2e-2),
       torch.bfloat16: (5e-2, 5e-2)}


def assert_close(actual, expected, dtype=None):
    dtype = dtype or actual.dtype
    rtol, atol = TOL[dtype]
    assert not torch.isnan(actual).any(), "output has NaN: an element was not written (poisoned memory)"
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def noncontiguous(t):
    """Same values as ``t`` in a non-contiguous view (every other column of a wider buffer)."""
    buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = buf[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() or t.numel() <= 1
    return view
