"""Property tests of prune_regrow (design.md §3) and of the csr_update merge behind CSRLayout.update.

prune_regrow (C++ CPU through the public wrapper) is checked against an independent Python-sort oracle
(tests/_ref.py) and the plain-torch reference, bit for bit, on scores drawn from a tiny value set so
ties, NaN, +-inf and -0.0 are common: exact nnz preservation, eligible positions never touched, ties
to the lower flat index, NaN dropped first / grown last, counts above capacity clipped, weights of
kept positions bit-identical, element and block granularity, several layers per call."""
import math

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecl.formats import CSRLayout
from sparsecl.ops import prune_regrow
from sparsecl.ops.prune_regrow import reference_prune_regrow

from .._ref import prune_regrow_oracle
from ._strategies import densities, gen, rand_mask, randn, seeds

SCORE_VALUES = [float("nan"), float("-inf"), float("inf"), -0.0, 0.0, -1.0, 1.0, 0.5, 2.0]


@st.composite
def layer(draw, seed):
    g = gen(seed)
    out_f, in_f = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    B = draw(st.sampled_from([1, 1, 2, 4]))
    wshape = (out_f, in_f)
    mshape = wshape if B == 1 else (math.ceil(out_f / B), math.ceil(in_f / B))
    if B > 1 and mshape == wshape:  # only B=1 can give the weight's own shape
        B = 1
    numel = mshape[0] * mshape[1]
    sdtype = draw(st.sampled_from([torch.float32, torch.float64]))
    tie_heavy = draw(st.booleans())

    def scores():
        if tie_heavy:
            idx = torch.tensor(draw(st.lists(st.integers(0, len(SCORE_VALUES) - 1), min_size=numel, max_size=numel)),
                               dtype=torch.long)
            return torch.tensor(SCORE_VALUES, dtype=sdtype)[idx].view(mshape)
        return randn(g, *mshape, dtype=sdtype)

    mask = rand_mask(g, mshape, draw(densities))
    eligible = rand_mask(g, mshape, draw(densities)) if draw(st.booleans()) else None
    count = draw(st.one_of(st.integers(0, numel + 3), st.just(numel), st.just(2**40)))
    return dict(w=randn(g, *wshape, dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16,
                                                                      torch.bfloat16]))),
                m=mask, p=scores(), g=scores(), n=count, e=eligible, B=B)


@st.composite
def layers(draw):
    seed = draw(seeds)
    L = draw(st.integers(1, 3))
    ls = [draw(layer(seed + l)) for l in range(L)]
    wdt = ls[0]["w"].dtype
    for d in ls:  # the op wants one weight dtype per call
        d["w"] = d["w"].to(wdt)
    if any(d["e"] is not None for d in ls):
        for d in ls:
            if d["e"] is None:
                d["e"] = torch.ones_like(d["m"])
    return ls


def _expand(flat, shape, wshape, B):
    t = torch.tensor(flat, dtype=torch.bool).view(shape)
    return t if B == 1 else t.repeat_interleave(B, 0).repeat_interleave(B, 1)[: wshape[0], : wshape[1]]


@given(ls=layers(), nc=st.booleans())
@example(ls=[dict(w=torch.ones(2, 3), m=torch.tensor([[True, False, True], [False, True, False]]),
                  p=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), g=torch.zeros(2, 3), n=2, e=None, B=1)],
         nc=False)  # tie: positions 0 and 2 share prune 1.0 and 4 too; grow ties everywhere -> lowest indices
@example(ls=[dict(w=torch.ones(1, 4), m=torch.tensor([[True, True, False, False]]),
                  p=torch.tensor([[2.0, float("nan"), 0.0, 0.0]]), g=torch.tensor([[0.0, 0.0, float("nan"), 1.0]]),
                  n=1, e=None, B=1)], nc=False)  # NaN prune dropped first, NaN grow never preferred
def test_prune_regrow_matches_oracle_and_invariants(ls, nc):
    weights = [d["w"].clone() for d in ls]
    if nc:
        weights = [torch.empty(*w.shape[:-1], 2 * w.shape[-1], dtype=w.dtype)[..., ::2].copy_(w) if w.dim() else w
                   for w in weights]
    masks = [d["m"].clone() for d in ls]
    eligible = [d["e"] for d in ls] if ls[0]["e"] is not None else None
    ref_w, ref_m = [d["w"].clone() for d in ls], [d["m"].clone() for d in ls]
    counts = [d["n"] for d in ls]
    changed = prune_regrow(weights, masks, [d["p"] for d in ls], [d["g"] for d in ls], counts, eligible)
    ref_changed = reference_prune_regrow(ref_w, ref_m, [d["p"] for d in ls], [d["g"] for d in ls], counts, eligible)
    assert changed == ref_changed
    for l, d in enumerate(ls):
        new, zeroed = prune_regrow_oracle(d["m"], d["p"], d["g"], d["n"], d["e"])
        assert masks[l].flatten().tolist() == new, f"layer {l}: mask differs from the §3 oracle"
        assert torch.equal(masks[l], ref_m[l])
        assert int(masks[l].sum()) == int(d["m"].sum()), "nnz must be preserved exactly"
        if d["e"] is not None:
            assert torch.equal(masks[l][~d["e"]], d["m"][~d["e"]]), "ineligible positions must never change"
        assert changed[l] == sum(zeroed)
        z = _expand(zeroed, d["m"].shape, d["w"].shape, d["B"])
        assert not weights[l][z].any(), "dropped and newly grown weights must be 0"
        assert torch.equal(weights[l][~z], d["w"][~z]), "all other weights stay bit-identical"
        assert torch.equal(weights[l], ref_w[l])


@given(seed=seeds, out_f=st.integers(0, 12), in_f=st.integers(0, 12), density=densities, keep_frac=densities,
       grow_frac=densities)
def test_csr_update_matches_torch_merge(seed, out_f, in_f, density, keep_frac, grow_frac):
    """CSRLayout.update (the C++ csr_update merge) equals the pure-torch merge and a rebuild from the mask."""
    g = gen(seed)
    layout = CSRLayout.random((out_f, in_f), density, generator=g)
    keep = rand_mask(g, (layout.nnz,), keep_frac)
    free = (~layout.mask()).flatten().nonzero().squeeze(1)
    grow = free[torch.randperm(free.numel(), generator=g)[: round(grow_frac * free.numel())]]
    new, src = layout.update(keep, grow)
    ref, ref_src = layout._update_torch(keep, grow.sort().values)
    for name, t in new.index_tensors().items():
        assert t.dtype == torch.int32 and torch.equal(t, getattr(ref, name)), name
    assert torch.equal(src, ref_src)
    expect = layout.mask().flatten().clone()
    expect[layout.keys()[~keep]] = False
    expect[grow] = True
    rebuilt = CSRLayout.from_mask(expect.view(out_f, in_f))
    for name, t in rebuilt.index_tensors().items():
        assert torch.equal(getattr(new, name), t), name
    assert torch.equal(src[src >= 0], torch.nonzero(keep).squeeze(1)), "kept entries keep their order"
