"""prune_regrow: C++ CPU kernel against the plain-torch reference (bit-identical masks and weights), the
contract's invariants checked directly, opcheck, and bad input."""
import math

import pytest
import torch

from sparsecl import _extension
from sparsecl.ops import prune_regrow
from sparsecl.ops.prune_regrow import block_size_of, drop_order, grow_order, reference_prune_regrow

from .._ref import CPU_ISAS
from ..conftest import DEVICES

needs_ext = pytest.mark.skipif(not _extension.AVAILABLE, reason="compiled extension not built")


def scores(shape, kind, gen, dtype=torch.float32):
    if kind == "ties":  # heavy ties: a few integers
        s = torch.randint(0, 3, shape, generator=gen).to(dtype)
    elif kind == "zeros":  # -0.0 and +0.0 must tie
        s = torch.zeros(shape, dtype=dtype)
        s[torch.rand(shape, generator=gen) < 0.5] = -0.0
    else:
        s = torch.randn(shape, generator=gen).to(dtype)
    if kind in ("nan", "ties"):
        s[torch.rand(shape, generator=gen) < 0.2] = float("nan")
        s[torch.rand(shape, generator=gen) < 0.05] = float("-inf")
        s[torch.rand(shape, generator=gen) < 0.05] = float("inf")
    return s


def random_layers(gen, n_layers, kind, block=False, with_eligible=False, dtype=torch.float32):
    """(weights, masks, prune, grow, counts, eligible) for random layer shapes, densities and counts."""
    ws, ms, ps, gs, cs, es = [], [], [], [], [], []
    for _ in range(n_layers):
        shape = (int(torch.randint(0, 40, (), generator=gen)), int(torch.randint(1, 40, (), generator=gen)))
        B = 8 if block else 1
        mshape = (math.ceil(shape[0] / B), math.ceil(shape[1] / B)) if block else shape
        density = [0.0, 1.0, float(torch.rand((), generator=gen))][int(torch.randint(0, 3, (), generator=gen))]
        w = torch.randn(shape, generator=gen).to(dtype)
        m = torch.rand(mshape, generator=gen) < density
        ws.append(w)
        ms.append(m)
        ps.append(scores(mshape, kind, gen))
        gs.append(scores(mshape, kind, gen))
        # counts: sometimes more than the candidates
        cs.append(int(torch.randint(0, max(1, 2 * m.numel()) + 1, (), generator=gen)))
        es.append(torch.rand(mshape, generator=gen) < 0.7)
    return ws, ms, ps, gs, cs, (es if with_eligible else None)


def clone_all(case):
    ws, ms, ps, gs, cs, es = case
    return [w.clone() for w in ws], [m.clone() for m in ms], ps, gs, list(cs), es


def bits_equal(a, b):
    return a.shape == b.shape and torch.equal(a.view(-1).view(torch.int32 if a.dtype == torch.float32 else torch.int64),
                                              b.view(-1).view(torch.int32 if b.dtype == torch.float32 else torch.int64))


@needs_ext
@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "zeros"])
@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("with_eligible", [False, True])
def test_cpu_matches_reference_bit_identical(kind, block, with_eligible, seed):
    gen = torch.Generator().manual_seed(seed)
    case = random_layers(gen, 12, kind, block, with_eligible)
    ws1, ms1, ps, gs, cs, es = clone_all(case)
    ws2, ms2, *_ = clone_all(case)
    got = prune_regrow(ws1, ms1, ps, gs, cs, es)
    want = reference_prune_regrow(ws2, ms2, ps, gs, cs, es)
    assert got == want
    for a, b, c, d in zip(ms1, ms2, ws1, ws2):
        assert a.dtype == torch.bool and torch.equal(a, b)
        assert bits_equal(c, d)


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("kind", ["randn", "ties", "nan"])
def test_invariants(impl, kind, seed):
    """The contract checked directly: nnz kept, eligible untouched, weights zero exactly where they should be."""
    gen = torch.Generator().manual_seed(seed)
    ws, ms, ps, gs, cs, es = clone_all(random_layers(gen, 16, kind, False, True))
    w0, m0 = [w.clone() for w in ws], [m.clone() for m in ms]
    fn = prune_regrow if impl == "op" and _extension.AVAILABLE else reference_prune_regrow
    changed = fn(ws, ms, ps, gs, cs, es)
    for l in range(len(ws)):
        A, M, E = m0[l], ms[l], es[l]
        assert M.dtype == torch.bool
        assert int(M.sum()) == int(A.sum()), "nnz must be preserved exactly"
        assert torch.equal(M[~E], A[~E]) and bits_equal(ws[l][~E], w0[l][~E]), "ineligible positions touched"
        n = min(cs[l], int((A & E).sum()))
        dropped, grown = A & ~M, M & ~A
        assert int(dropped.sum()) == int(grown.sum()) <= n
        assert changed[l] == int(dropped.sum()) + int(grown.sum())
        assert (ws[l][dropped | grown] == 0).all()
        keep = ~(dropped | grown)
        assert bits_equal(ws[l][keep], w0[l][keep])
        # drop set: the n smallest of A ∩ E in drop order (whether or not regrown)
        order = drop_order(ps[l])
        D = order[(A & E).flatten()[order]][:n]
        assert set(dropped.flatten().nonzero().flatten().tolist()) <= set(D.tolist())


def test_orders_follow_nan_and_tie_rules():
    s = torch.tensor([1.0, float("nan"), 1.0, -float("inf"), 0.0, -0.0, float("nan")])
    assert drop_order(s).tolist() == [1, 6, 3, 4, 5, 0, 2]
    assert grow_order(s).tolist() == [0, 2, 4, 5, 3, 1, 6]


@needs_ext
def test_hand_example():
    w = torch.arange(1.0, 9.0).view(2, 4)
    m = torch.tensor([[True, True, False, False], [True, False, False, True]])
    p = torch.tensor([[5.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, float("nan")]])  # drop order: 7 (nan), 1, 4 (tie -> lower)
    g = torch.tensor([[0.0, 9.0, 3.0, 3.0], [0.0, 0.0, 7.0, 0.0]])  # candidates: 2,3,5,6 + dropped 1,7
    changed = prune_regrow([w], [m], [p], [g], [2])
    # D = {7, 1}; G = {1 (9.0, regrown, keeps its weight), 6 (7.0)}
    assert m.tolist() == [[True, True, False, False], [True, False, True, False]]
    assert w.tolist() == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]]
    assert changed == [2]


@needs_ext
def test_block_granularity_with_element_scores(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(40, 70, generator=gen)  # block grid 3 x 3 at B = 16 (edge blocks clipped)
    m = torch.rand(3, 5, generator=gen) < 0.5
    m[0, 0], m[0, 1] = True, False
    assert block_size_of(w.shape, m.shape) == 16
    pe, ge = torch.randn(40, 70, generator=gen), torch.randn(40, 70, generator=gen)
    w1, m1, w2, m2 = w.clone(), m.clone(), w.clone(), m.clone()
    from sparsecl.formats import block_reduce
    got = prune_regrow([w1], [m1], [pe], [ge], [1])
    want = reference_prune_regrow([w2], [m2], [block_reduce(pe, 16, "abs_sum")], [block_reduce(ge, 16, "abs_sum")], [1])
    assert got == want and torch.equal(m1, m2) and bits_equal(w1, w2)
    full = m1.repeat_interleave(16, 0).repeat_interleave(16, 1)[:40, :70]
    moved = full != m.repeat_interleave(16, 0).repeat_interleave(16, 1)[:40, :70]
    assert (w1[moved] == 0).all() and bits_equal(w1[~moved], w[~moved])


@needs_ext
@pytest.mark.parametrize("wdtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_and_noncontiguous(wdtype, seed):
    gen = torch.Generator().manual_seed(seed)
    buf = torch.randn(30, 60, generator=gen).to(wdtype)
    w1, w2 = buf[:, ::2], buf.clone()[:, ::2].contiguous()  # non-contiguous view is updated in place
    m = torch.rand(30, 30, generator=gen) < 0.3
    m1, m2 = m.clone(), m.clone()
    p, g = torch.randn(30, 30, generator=gen, dtype=torch.float64), torch.randn(30, 30, generator=gen, dtype=torch.float64)
    assert prune_regrow([w1], [m1], [p], [g], [5]) == reference_prune_regrow([w2], [m2], [p], [g], [5])
    assert torch.equal(m1, m2) and torch.equal(w1, w2)
    assert torch.equal(buf[:, ::2], w1)


@needs_ext
def test_empty_list_and_zero_counts():
    assert prune_regrow([], [], [], [], []) == []
    w, m = torch.randn(4, 4), torch.rand(4, 4) < 0.5
    w0, m0 = w.clone(), m.clone()
    assert prune_regrow([w], [m], [torch.randn(4, 4)], [torch.randn(4, 4)], torch.tensor([0])) == [0]
    assert torch.equal(w, w0) and torch.equal(m, m0)


@needs_ext
def test_opcheck(seed):
    gen = torch.Generator().manual_seed(seed)
    ws, ms, ps, gs, cs, es = clone_all(random_layers(gen, 3, "ties", False, True))
    counts = torch.tensor(cs, dtype=torch.int64)
    torch.library.opcheck(torch.ops.sparsecl.prune_regrow.default, (ws, ms, ps, gs, counts, es),
                          test_utils=("test_schema", "test_faketensor"))


def _one():
    return [torch.randn(4, 4)], [torch.rand(4, 4) < 0.5], [torch.randn(4, 4)], [torch.randn(4, 4)], [1]


@pytest.mark.parametrize("bad, msg", [
    (lambda a: a[1].__setitem__(0, a[1][0].float()), "bool"),
    (lambda a: a[2].__setitem__(0, torch.randn(3, 4)), "shape"),
    (lambda a: a.__setitem__(4, [-1]), ">= 0"),
    (lambda a: a.__setitem__(4, [1, 2]), "counts"),
    (lambda a: a[3].append(torch.randn(4, 4)), "one entry per layer"),
    (lambda a: a[1].__setitem__(0, torch.rand(3, 3) < 0.5), "block grid"),
    (lambda a: a[0].__setitem__(0, torch.arange(16).view(4, 4)), "floating"),
])
def test_bad_input_raises_value_error(bad, msg):
    args = list(_one())
    bad(args)
    with pytest.raises(ValueError, match=msg):
        prune_regrow(*args)


def test_bad_eligible_and_device():
    args = _one()
    with pytest.raises(ValueError, match="eligible"):
        prune_regrow(*args, eligible=[torch.ones(4, 4)])
    if torch.cuda.is_available():
        w, m, p, g, c = args
        with pytest.raises(ValueError, match="on"):
            prune_regrow(w, [m[0].cuda()], p, g, c)


@needs_ext
def test_cpp_checks_raise_runtime_error():
    w, m, p, g, _ = _one()
    with pytest.raises(RuntimeError, match=">= 0"):
        torch.ops.sparsecl.prune_regrow(w, m, p, g, torch.tensor([-2]), [])
    with pytest.raises(RuntimeError, match="bool"):
        torch.ops.sparsecl.prune_regrow(w, [m[0].float()], p, g, torch.tensor([1]), [])


@pytest.mark.skipif(not torch.cuda.is_available() or not _extension.HAS_CUDA_KERNELS, reason="needs CUDA kernels")
@pytest.mark.parametrize("kind", ["randn", "ties", "nan"])
@pytest.mark.parametrize("block", [False, True])
def test_cuda_matches_reference(kind, block, seed):
    gen = torch.Generator().manual_seed(seed)
    case = random_layers(gen, 12, kind, block, True)
    ws1, ms1, ps, gs, cs, es = clone_all(case)
    ws2, ms2, *_ = clone_all(case)
    dev = lambda ts: [t.cuda() for t in ts]  # noqa: E731
    wc, mc = dev(ws1), dev(ms1)
    got = prune_regrow(wc, mc, dev(ps), dev(gs), cs, dev(es))
    want = reference_prune_regrow(ws2, ms2, ps, gs, cs, es)
    assert got == want
    for a, b, c, d in zip(mc, ms2, wc, ws2):
        assert torch.equal(a.cpu(), b) and bits_equal(c.cpu(), d)


@needs_ext
@pytest.mark.parametrize("kind", ["randn", "ties", "adversarial"])
def test_large_layer_sampled_bound_and_fallback(kind, seed):
    """Layers >= 64K positions guess the grow threshold from a sample; "adversarial" puts the best grow
    scores exactly in the sampled chunks, so the guess falls short and the second pass must run."""
    gen = torch.Generator().manual_seed(seed)
    shape = (300, 301)
    m = torch.rand(shape, generator=gen) < 0.1
    w = torch.randn(shape, generator=gen)
    p = scores(shape, "ties" if kind == "ties" else "randn", gen)
    g = scores(shape, "ties" if kind == "ties" else "randn", gen)
    if kind == "adversarial":
        g = torch.rand(shape, generator=gen)
        flat, N = g.view(-1), g.numel()
        for c in range(64):
            flat[c * (N // 64): c * (N // 64) + 128] = 100.0
    # adversarial: n exceeds the ~7.4K sampled candidates at 100.0, so the true threshold is past the guess
    n = int((0.9 if kind == "adversarial" else 0.3) * int(m.sum()))
    w1, m1, w2, m2 = w.clone(), m.clone(), w.clone(), m.clone()
    assert prune_regrow([w1], [m1], [p], [g], [n]) == reference_prune_regrow([w2], [m2], [p], [g], [n])
    assert torch.equal(m1, m2) and bits_equal(w1, w2)


def sort_oracle(ws, ms, ps, gs, cs, es):
    """The contract spelled out with stable sorts (independent of the reference's integer ranks)."""
    out = []
    for l, (w, m, p, g) in enumerate(zip(ws, ms, ps, gs)):
        A = m.flatten().clone()
        E = es[l].flatten() if es else torch.ones_like(A)
        n = min(cs[l], int((A & E).sum()))
        d = drop_order(p)
        D = d[(A & E)[d]][:n]
        cand = E & ~A
        cand[D] = True
        go = grow_order(g)
        G = go[cand[go]][:n]
        new = A.clone()
        new[D] = False
        new[G] = True
        out.append((new.view(m.shape), D, G))
    return out


@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "zeros"])
@pytest.mark.parametrize("score_dtype", [torch.float32, torch.float16, torch.float64])
def test_reference_matches_sort_oracle(kind, score_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    ws, ms, ps, gs, cs, es = clone_all(random_layers(gen, 12, kind, False, True))
    ps, gs = [p.to(score_dtype) for p in ps], [g.to(score_dtype) for g in gs]
    want = sort_oracle(ws, ms, ps, gs, cs, es)
    reference_prune_regrow(ws, ms, ps, gs, cs, es)
    for (new, _, _), m in zip(want, ms):
        assert torch.equal(m, new)


@needs_ext
@pytest.mark.parametrize("kind", ["randn", "ties"])
def test_lone_large_layer_split_over_threads(kind, seed):
    """A lone layer of >= 2 * 2**18 positions splits its first pass into chunks (when threads allow)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (800, 700)
    m = torch.rand(shape, generator=gen) < 0.1
    w = torch.randn(shape, generator=gen)
    p, g = scores(shape, kind, gen), scores(shape, kind, gen)
    e = torch.rand(shape, generator=gen) < 0.9
    n = int(0.3 * int(m.sum()))
    w1, m1, w2, m2 = w.clone(), m.clone(), w.clone(), m.clone()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        got = prune_regrow([w1], [m1], [p], [g], [n], [e])
    finally:
        torch.set_num_threads(threads)
    assert got == reference_prune_regrow([w2], [m2], [p], [g], [n], [e])
    assert torch.equal(m1, m2) and bits_equal(w1, w2)


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request, monkeypatch):
    """Runs the test on every scan this CPU can run (portable, AVX2, AVX-512)."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", request.param)
    return request.param


@needs_ext
@pytest.mark.parametrize("kind", ["randn", "ties", "nan", "zeros"])
@pytest.mark.parametrize("with_eligible", [False, True])
def test_each_isa_matches_reference(cpu_isa, kind, with_eligible, seed):
    gen = torch.Generator().manual_seed(seed)
    case = random_layers(gen, 12, kind, False, with_eligible)
    ws1, ms1, ps, gs, cs, es = clone_all(case)
    ws2, ms2, *_ = clone_all(case)
    assert prune_regrow(ws1, ms1, ps, gs, cs, es) == reference_prune_regrow(ws2, ms2, ps, gs, cs, es)
    for a, b, c, d in zip(ms1, ms2, ws1, ws2):
        assert torch.equal(a, b) and bits_equal(c, d)


def run_both(ws, ms, ps, gs, cs, es=None):
    """prune_regrow and the reference on copies; asserts identical results."""
    w1, m1 = [w.clone() for w in ws], [m.clone() for m in ms]
    w2, m2 = [w.clone() for w in ws], [m.clone() for m in ms]
    assert prune_regrow(w1, m1, ps, gs, cs, es) == reference_prune_regrow(w2, m2, ps, gs, cs, es)
    for a, b, c, d in zip(m1, m2, w1, w2):
        assert torch.equal(a, b) and bits_equal(c, d)
    return m1


@needs_ext
@pytest.mark.parametrize("kind", ["drop", "grow"])
def test_large_layer_short_guess_rescans(cpu_isa, kind, seed):
    """The sampled bounds read 64 runs of 128 positions at r * (N // 64); putting the extreme scores exactly
    there makes the guessed bound collect fewer than n candidates, so that set is collected again."""
    gen = torch.Generator().manual_seed(seed)
    shape = (300, 301)
    N = shape[0] * shape[1]
    m = torch.rand(shape, generator=gen) < (0.1 if kind == "drop" else 0.12)
    w = torch.randn(shape, generator=gen)
    p, g = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    runs = torch.zeros(N, dtype=torch.bool)
    for r in range(64):
        runs[r * (N // 64): r * (N // 64) + 128] = True
    runs = runs.view(shape)
    if kind == "drop":
        p[runs] = -100.0  # every sampled active position looks like a drop
        n = int(0.3 * int(m.sum()))
        assert n > int((m & runs).sum())  # more than the bound guessed from the sample can collect
    else:
        g[runs] = 100.0  # every sampled position looks like a grow
        n = int(0.9 * int(m.sum()))
        assert n > int(runs.sum())
    run_both([w], [m], [p], [g], [n])


@needs_ext
@pytest.mark.parametrize("kind", ["zeros", "ties", "nan"])
def test_large_layers_heavy_ties_with_eligible(cpu_isa, kind, seed):
    """Several multi-chunk and sampled layers at once, with ties spanning the threshold (zeros: all
    scores +-0.0, so both selections go by index alone)."""
    gen = torch.Generator().manual_seed(seed)
    ws, ms, ps, gs, cs, es = [], [], [], [], [], []
    for shape in [(700, 800), (257, 300), (3, 5), (300, 257)]:
        m = torch.rand(shape, generator=gen) < 0.1
        ws.append(torch.randn(shape, generator=gen))
        ms.append(m)
        ps.append(scores(shape, kind, gen))
        gs.append(scores(shape, kind, gen))
        cs.append(int(0.3 * int(m.sum())))
        es.append(torch.rand(shape, generator=gen) < 0.9)
    run_both(ws, ms, ps, gs, cs, es)


@needs_ext
def test_large_layer_float64_scores(seed):
    """float64 scores use 64-bit keys (128-bit ranks) through the sampled and chunked path."""
    gen = torch.Generator().manual_seed(seed)
    shape = (600, 500)
    m = torch.rand(shape, generator=gen) < 0.2
    w = torch.randn(shape, generator=gen)
    p = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    g[:, :3] = 1 + 1e-12 * torch.rand(600, 3, generator=gen, dtype=torch.float64)  # differ only beyond float32
    run_both([w], [m], [p], [g], [int(0.3 * int(m.sum()))])


# random_scores (random growth) ---------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (33, 65), (3, 1000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_scores_cpu_matches_torch_formulation(cpu_isa, shape, threads, seed):
    """The C++ kernel gives bit-identical values to the torch formulation (the CUDA kernel), for any seed,
    thread count and ISA."""
    from sparsecl.ops.prune_regrow import _random_scores_torch
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for s in (seed, -seed - 1, 2 ** 63 - 1 - seed):
            got = torch.full(shape, float("nan"))
            torch.ops.sparsecl.random_scores_(got, s)
            want = torch.full(shape, float("nan"))
            _random_scores_torch(want, s)
            assert torch.equal(got, want)
    finally:
        torch.set_num_threads(saved)


def test_random_scores_are_uniform_and_seeded(seed):
    """U[0, 1) in 24-bit steps: bin counts, mean and variance, lag-1 correlation, and seed independence."""
    from sparsecl.ops import random_scores
    n = 1 << 20
    u = random_scores((n,), seed).double()
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert torch.equal(u * 2 ** 24, (u * 2 ** 24).round())
    counts = torch.histc(u, bins=64, min=0.0, max=1.0)
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 130, chi2  # 63 degrees of freedom: p ~ 1e-6
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12 / n) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 1e-3
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 5 / n ** 0.5
    v = random_scores((n,), seed + 1).double()
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 5 / n ** 0.5
    assert torch.equal(random_scores((n,), seed), u.float())


def test_random_scores_bad_input_and_opcheck(seed):
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.sparsecl.random_scores_(torch.empty(4, dtype=torch.float64), seed)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.sparsecl.random_scores_(torch.empty(4, 6)[:, ::2], seed)
    torch.library.opcheck(torch.ops.sparsecl.random_scores_.default, (torch.empty(5, 7), seed))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_only_layers(cpu_isa, device, seed):
    """None weights: the masks change exactly as with a weight (mixed with ordinary and block layers in one
    call), the same counts come back, and the other layers' weights are still updated."""
    gen = torch.Generator().manual_seed(seed)
    ws, ms, ps, gs, cs, es = random_layers(gen, 6, "ties", False, True)
    bw, bm, bp, bg, bc, be = random_layers(gen, 2, "randn", True, True)
    ws, ms, ps, gs, cs, es = ws + bw, ms + bm, ps + bp, gs + bg, cs + bc, es + be
    to = lambda ts: [t.to(device) for t in ts]  # noqa: E731
    ws, ms, ps, gs, es = to(ws), to(ms), to(ps), to(gs), to(es)
    w_ref, m_ref = [w.clone() for w in ws], [m.clone() for m in ms]
    want = prune_regrow(w_ref, m_ref, ps, gs, cs, es)
    none_at = {0, 2, 3}
    w_got = [None if i in none_at else w.clone() for i, w in enumerate(ws)]
    m_got = [m.clone() for m in ms]
    assert prune_regrow(w_got, m_got, ps, gs, cs, es) == want
    for i, (a, b) in enumerate(zip(m_got, m_ref)):
        assert torch.equal(a, b)
        if i not in none_at:
            assert bits_equal(w_got[i], w_ref[i])


def test_mask_only_empty_layer():
    """A None weight next to an empty mask (0 rows) changes nothing, in the kernel and in the reference."""
    m, s = torch.zeros(0, 34, dtype=torch.bool), torch.zeros(0, 34)
    assert prune_regrow([None], [m], [s], [s], [3]) == [0]
    assert reference_prune_regrow([torch.empty(0)], [m], [s], [s], [3]) == [0]
