"""Fuzzing the layout constructors and the public op wrappers' user-data checks.

BlockSparseLayout / CSRLayout (constructor, from_mask, from_block_mask, from_dense, update) get random
index data: negative, out-of-range and huge entries, wrong lengths, float/bool/uint8 dtypes, 2-D arrays,
unsorted or duplicate columns, non-monotone row_ptr. Contract: ValueError with a message, or a layout
that passes validation, whose dense/mask round trips agree, and that bsr_linear / csr_linear run on
(matching the float64 reference). prune_regrow (public wrapper): NaN/Inf scores, counts negative, above
capacity or of the wrong type, mismatched list lengths, masks of the wrong shape/dtype. Masks of the
wrong shape/dtype for masked_linear and slimmable_linear.
"""
import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecl.formats import BlockSparseLayout, CSRLayout, validate_csr
from sparsecl.ops import bsr_linear, csr_linear, masked_linear, prune_regrow, slimmable_linear

from .._ref import assert_close, ref_linear
from ._strategies import fuzz_settings

ENTRY = st.one_of(st.integers(-3, 12), st.sampled_from([-2**31, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1, -2**63]))
INDEX_DTYPES = st.sampled_from([None, torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8, torch.bool,
                                torch.float32, torch.float64])


@st.composite
def index_data(draw, near_valid_len):
    """A list, or a tensor of a random dtype and rank, of mostly small entries."""
    n = draw(st.one_of(st.just(near_valid_len), st.integers(0, 12)))
    vals = draw(st.lists(ENTRY, min_size=n, max_size=n))
    if draw(st.booleans()) and vals:  # often a sorted (plausible) index
        vals = sorted(vals)
    dtype = draw(INDEX_DTYPES)
    if dtype is None:
        return vals
    t = torch.tensor(vals, dtype=torch.float64).to(dtype) if dtype.is_floating_point or dtype == torch.bool \
        else torch.tensor([max(min(v, torch.iinfo(dtype).max), torch.iinfo(dtype).min) for v in vals], dtype=dtype)
    if draw(st.booleans()) and t.numel() % 2 == 0 and t.numel():
        t = t.view(2, -1)
    return t


def _check_layout(layout, out_f, in_f, B=None):
    rows = math.ceil(out_f / B) if B else out_f
    cols = math.ceil(in_f / B) if B else in_f
    validate_csr(layout.row_ptr, layout.col_idx, rows, cols)
    for name, t in layout.index_tensors().items():
        assert t.dtype == torch.int32 and t.dim() == 1, name
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, in_f, generator=g, dtype=torch.float64)
    if B:
        v = torch.randn(layout.nnzb, B, B, generator=g, dtype=torch.float64)
        y = bsr_linear(x, v, layout)
        assert torch.equal(layout.mask(), layout.to_dense(torch.ones_like(v)) != 0)
    else:
        v = torch.randn(layout.nnz, generator=g, dtype=torch.float64)
        y = csr_linear(x, v, layout)
        assert torch.equal(layout.mask(), layout.to_dense(torch.ones_like(v)) != 0)
        assert torch.equal(layout.values_from_dense(layout.to_dense(v)), v)
    assert_close(y, ref_linear(x, layout.to_dense(v)))


def _expect_value_error(fn):
    try:
        return fn()
    except ValueError as exc:
        assert str(exc).strip()
        return None


@fuzz_settings(150)
@given(out_f=st.integers(-1, 40), in_f=st.integers(-1, 40), B=st.sampled_from([16, 32, 64, 0, 8, -16]),
       data=st.data())
@example(out_f=16, in_f=16, B=16, data=None)
def test_block_sparse_layout_constructor(out_f, in_f, B, data):
    if data is None:  # explicit: a row_ptr entry beyond int32 must be a ValueError, not an overflow
        rp, ci = [0, 2**31], [0]
    else:
        nbr = math.ceil(max(out_f, 0) / 16) + 1
        rp, ci = data.draw(index_data(nbr)), data.draw(index_data(2))
    layout = _expect_value_error(lambda: BlockSparseLayout(rp, ci, (out_f, in_f), B))
    if layout is not None:
        _check_layout(layout, out_f, in_f, B)


@fuzz_settings(150)
@given(out_f=st.integers(-1, 12), in_f=st.integers(-1, 12), data=st.data())
def test_csr_layout_constructor(out_f, in_f, data):
    rp, ci = data.draw(index_data(max(out_f, 0) + 1)), data.draw(index_data(3))
    layout = _expect_value_error(lambda: CSRLayout(rp, ci, (out_f, in_f)))
    if layout is not None:
        _check_layout(layout, out_f, in_f)


MASK_DTYPES = st.sampled_from([torch.bool, torch.bool, torch.uint8, torch.int32, torch.float32])


@fuzz_settings(150)
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=3), dtype=MASK_DTYPES, p=st.floats(0, 1),
       B=st.sampled_from([16, 32, 64, 7]), which=st.sampled_from(["csr_mask", "csr_dense", "block_mask",
                                                                  "block_dense"]), seed=st.integers(0, 2**16))
@example(shape=[0, 0, 0], dtype=torch.bool, p=0.0, B=16, which="block_dense", seed=0)  # was a RuntimeError
@example(shape=[], dtype=torch.bool, p=0.0, B=16, which="block_dense", seed=0)  # was an IndexError
def test_from_mask_and_from_dense(shape, dtype, p, B, which, seed):
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(*shape, generator=g) < p).to(dtype) if shape else torch.tensor(True).to(dtype)
    if which == "csr_mask":
        layout = _expect_value_error(lambda: CSRLayout.from_mask(t))
    elif which == "csr_dense":
        layout = _expect_value_error(lambda: CSRLayout.from_dense(t))
    elif which == "block_mask":
        layout = _expect_value_error(lambda: BlockSparseLayout.from_block_mask(t, None, B))
    else:
        layout = _expect_value_error(lambda: BlockSparseLayout.from_dense(t, B))
    if layout is None:
        return
    if which.startswith("csr"):
        assert torch.equal(layout.mask(), t != 0)
        _check_layout(layout, *layout.shape)
    else:
        expect = t != 0 if which == "block_mask" else None
        if expect is not None:
            assert torch.equal(layout.block_mask(), expect)
        else:
            assert torch.equal(layout.mask() | (t == 0), torch.ones_like(layout.mask())), "nonzeros must be covered"
        _check_layout(layout, *layout.shape, B)


@fuzz_settings(150)
@given(out_f=st.integers(0, 8), in_f=st.integers(0, 8), seed=st.integers(0, 2**16),
       keep=st.one_of(st.none(), st.lists(st.booleans(), max_size=10)),
       grow=st.lists(st.one_of(st.integers(-2, 70), st.sampled_from([2**31, 2**62, -2**62])), max_size=6))
def test_csr_layout_update_bad_input(out_f, in_f, seed, keep, grow):
    layout = CSRLayout.random((out_f, in_f), 0.5, generator=torch.Generator().manual_seed(seed))
    k = torch.ones(layout.nnz, dtype=torch.bool) if keep is None else torch.tensor(keep, dtype=torch.bool)
    res = _expect_value_error(lambda: layout.update(k, torch.tensor(grow, dtype=torch.int64)))
    if res is None:
        return
    new, src = res
    expect = layout.mask().flatten().clone()
    expect[layout.keys()[~k]] = False
    expect[torch.tensor(grow, dtype=torch.int64)] = True
    assert torch.equal(new.mask().flatten(), expect)
    _check_layout(new, out_f, in_f)


SCORES = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, 3e38])


@st.composite
def prune_regrow_args(draw):
    """A valid 1-2 layer call, then 1-2 user-data mutations."""
    L = draw(st.integers(1, 2))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = [torch.randn(4, 5, generator=g) for _ in range(L)]
    m = [torch.rand(4, 5, generator=g) < 0.5 for _ in range(L)]
    p = [torch.randn(4, 5, generator=g).masked_fill(torch.rand(4, 5, generator=g) < 0.3, draw(SCORES))
         for _ in range(L)]
    gr = [torch.randn(4, 5, generator=g).masked_fill(torch.rand(4, 5, generator=g) < 0.3, draw(SCORES))
          for _ in range(L)]
    counts = [draw(st.integers(0, 25)) for _ in range(L)]
    elig, m0 = None, m[0]
    kinds = ["counts", "counts_type", "mask", "score", "eligible", "weight", "lists"]
    for what in sorted(draw(st.lists(st.sampled_from(kinds), max_size=2, unique=True)), key=kinds.index):
        if what == "counts":
            counts = [draw(st.sampled_from([-1, -2**62, 2**62, 0, 21, 2**31])) for _ in range(L)]
        elif what == "counts_type":
            counts = draw(st.sampled_from([[1.5] * L, [True] * L, "3", None, torch.tensor([1.0] * L),
                                           torch.tensor([[1] * L]), [1] * (L + 1), torch.tensor([-1] * L)]))
        elif what == "lists":
            which = draw(st.sampled_from(["w", "m", "p", "g"]))
            lst = {"w": w, "m": m, "p": p, "g": gr}[which]
            lst.append(lst[0].clone() if isinstance(lst[0], torch.Tensor) else lst[0]) if draw(st.booleans()) \
                else lst.pop()
        elif what == "mask":
            m[0] = draw(st.sampled_from([m[0].to(torch.uint8), m[0][:3], m[0].t().contiguous(),
                                         torch.ones(2, 3, dtype=torch.bool), m[0].float(), m[0][None]]))
        elif what == "score":
            p[0] = draw(st.sampled_from([p[0][:, :4], p[0].to(torch.int64), p[0].to(torch.float16), "x", p[0][None],
                                         torch.full((4, 5), float("nan"))]))
        elif what == "eligible":
            elig = draw(st.sampled_from([[m0] * (L + 1), [m0.float()] * L, [m0[:2]] * L, [~m0] * L, m0]))
        else:
            w[0] = draw(st.sampled_from([w[0].to(torch.int64), w[0][:, :3], w[0].double(), "w"]))
    return w, m, p, gr, counts, elig


@fuzz_settings(300)
@given(args=prune_regrow_args())
def test_prune_regrow_bad_user_data(args):
    w, m, p, g, counts, elig = args
    nnz = [int(x.sum()) if isinstance(x, torch.Tensor) and x.dtype == torch.bool else None for x in m]
    masks_before = [x.clone() if isinstance(x, torch.Tensor) else x for x in m]
    try:
        changed = prune_regrow(w, m, p, g, counts, elig)
    except (ValueError, RuntimeError) as exc:
        assert str(exc).strip()
        for a, b in zip(m, masks_before):  # a rejected call mutates nothing
            assert not isinstance(a, torch.Tensor) or torch.equal(a, b)
        return
    assert isinstance(changed, list) and len(changed) == len(w)
    for l, x in enumerate(m):
        assert int(x.sum()) == nnz[l], "nnz must be preserved, whatever the scores and counts"


@fuzz_settings(150)
@given(op=st.sampled_from(["masked", "masked_grad", "slim"]), shape=st.lists(st.integers(0, 8), max_size=3),
       dtype=MASK_DTYPES, o=st.integers(-2, 9), seed=st.integers(0, 2**16))
def test_masks_of_wrong_shape_or_dtype(op, shape, dtype, o, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(3, 5, generator=g), torch.randn(7, 5, generator=g)
    mask = (torch.rand(shape, generator=g) < 0.5).to(dtype)
    ok_mask = torch.ones(7, 5, dtype=torch.bool)
    try:
        if op == "masked":
            y = masked_linear(x, w, mask)
            expect = ref_linear(x, torch.where(mask, w, 0))
        elif op == "masked_grad":
            w.requires_grad_(True)
            y = masked_linear(x, w, ok_mask, None, mask)
            y.sum().backward()
            assert not w.grad.masked_select(~mask).any()
            expect = ref_linear(x, w)
        else:
            y = slimmable_linear(x, w, None, o, mask)
            expect = ref_linear(x, torch.where(mask, w, 0)[:o])
    except ValueError as exc:
        assert str(exc).strip()
        return
    assert tuple(mask.shape) == (7, 5) and mask.dtype == torch.bool, "a wrong mask was accepted"
    assert_close(y.detach(), expect.detach())
