"""Hypothesis strategies shared by the reliability tests: small random shapes (0, 1, odd and
non-multiples of the block size included), densities with 0 and 1 as explicit cases, CPU dtypes, and
seeded torch generators so every tensor is a pure function of the drawn example (reproducible, shrinkable).
"""
import os

import torch
from hypothesis import settings
from hypothesis import strategies as st

LONG = os.environ.get("SPARSECL_HYPOTHESIS_PROFILE", "ci") == "long"


def fuzz_settings(ci_examples):
    """Settings of a fuzz target: ``ci_examples`` in CI, the long profile's 10,000 under SPARSECL_HYPOTHESIS_PROFILE=long."""
    return settings(max_examples=settings().max_examples if LONG else ci_examples)


dims = st.one_of(st.sampled_from([0, 1]), st.integers(0, 70))
small_dims = st.integers(0, 9)
tokens = st.integers(0, 9)
densities = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
block_sizes = st.sampled_from([16, 32, 64])
# float32/float64 are the CPU dtypes; half types must be rejected with a clear error (or work)
dtypes = st.sampled_from([torch.float32, torch.float64])
any_float_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])
seeds = st.integers(0, 2**31 - 1)
lead_dims = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def rand_mask(g, shape, density):
    """Bool mask with exactly round(density * numel) True entries at random positions."""
    n = 1
    for s in shape:
        n *= s
    m = torch.zeros(n, dtype=torch.bool)
    m[torch.randperm(n, generator=g)[: round(density * n)]] = True
    return m.view(shape)


def maybe_noncontiguous(t, flag):
    from .._ref import noncontiguous

    return noncontiguous(t) if flag and t.dim() else t
