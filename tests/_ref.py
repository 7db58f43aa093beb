"""Helpers shared by op tests: float64 references and tolerances."""
import torch

import sparsecl

# CPU kernel paths this machine can run, lowest first (SPARSECL_CPU_ISA forces one; float32 only)
RUNTIME_ISA = sparsecl.build_info().get("cpu_isa_runtime", "generic")
CPU_ISAS = ["generic", "avx2", "avx512"][: ["generic", "avx2", "avx512"].index(RUNTIME_ISA) + 1]

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


def float64_leaves(*tensors):
    """Detached float64 copies of ``tensors`` that require grad (None stays None): the reference's inputs."""
    return tuple(None if t is None else t.detach().double().requires_grad_(True) for t in tensors)


def ref_linear(x, w, bias=None):
    """float64 ``x @ w.T + bias`` for x [..., in], w [out, in]."""
    y = x.double() @ w.double().T
    return y + bias.double() if bias is not None else y


def ref_conv2d(x, w, bias=None, stride=1, padding=0, dilation=1):
    """float64 dense conv2d (groups=1); empty batch or channels give bias-only output of the conv's shape."""
    if 0 in (x.shape[0], x.shape[1], w.shape[0]):  # F.conv2d mis-shapes or rejects these
        s, p, d = (torch.nn.modules.utils._pair(v) for v in (stride, padding, dilation))
        size = [(x.shape[2 + i] + 2 * p[i] - d[i] * (w.shape[2 + i] - 1) - 1) // s[i] + 1 for i in range(2)]
        y = torch.zeros(x.shape[0], w.shape[0], *size, dtype=torch.float64) + (x.sum() + w.sum()).double() * 0
        return y + bias.double().view(1, -1, 1, 1) if bias is not None else y
    return torch.nn.functional.conv2d(x.double(), w.double(), None if bias is None else bias.double(), stride,
                                      padding, dilation)


def assert_grads_close(actual, expected, dtype):
    """Pairwise assert_close of gradients; a None on either side must be None (or all-zero) on the other."""
    for a, e in zip(actual, expected):
        if a is None or e is None:
            other = e if a is None else a
            assert other is None or not other.any(), "one side has a nonzero gradient, the other none"
            continue
        assert_close(a, e, dtype)


def prune_regrow_oracle(mask, prune, grow, n, eligible=None):
    """design.md §3 for one layer, by plain Python sorting: returns (new_mask, zeroed) as flat bool lists.

    Drop: the n smallest prune scores of A ∩ E by (not NaN, score, index); grow: the n largest grow scores of
    E \\ (A \\ D) by (NaN, -score, index); n clipped to |A ∩ E|; zeroed = (G \\ A) ∪ (D \\ G)."""
    import math

    A = mask.flatten().tolist()
    E = eligible.flatten().tolist() if eligible is not None else [True] * len(A)
    p, g = prune.flatten().double().tolist(), grow.flatten().double().tolist()
    cand = [i for i in range(len(A)) if A[i] and E[i]]
    n = min(n, len(cand))
    D = set(sorted(cand, key=lambda i: (not math.isnan(p[i]), 0.0 if math.isnan(p[i]) else p[i] + 0.0, i))[:n])
    gcand = [i for i in range(len(A)) if E[i] and (not A[i] or i in D)]
    G = set(sorted(gcand, key=lambda i: (math.isnan(g[i]), 0.0 if math.isnan(g[i]) else -g[i] + 0.0, i))[:n])
    new = [(A[i] and i not in D) or i in G for i in range(len(A))]
    zeroed = [(i in G and not A[i]) or (i in D and i not in G) for i in range(len(A))]
    return new, zeroed


def address_sanitized():
    """True when the tests run under `make asan` (ASan reserves terabytes of address space, so an
    RLIMIT_AS cap cannot be used; ASAN_OPTIONS max_allocation_size_mb caps allocations instead)."""
    import os
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def dispatcher_ops(*names):
    """Callables for ``torch.ops.sparsecl.<name>``, looked up at call time (once the extension has loaded)."""
    def op(name):
        return lambda *args: getattr(torch.ops.sparsecl, name)(*args)
    return tuple(op(n) for n in names)
