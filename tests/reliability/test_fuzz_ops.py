"""Fuzzing the raw dispatcher ops ``torch.ops.sparsecl.*`` (the C++ CPU kernels) with bad arguments.

Each example starts from a valid call of one op and applies 1-3 random mutations: index tensors with
out-of-range, negative, extreme, unsorted or duplicate entries, wrong lengths, dtypes, ranks or strides;
float tensors with NaN/Inf, wrong shapes or dtypes; ints and int lists out of range; tensor lists too short
or too long; optional tensors dropped or misshaped. Contract: the kernel raises (RuntimeError from
TORCH_CHECK, or torch's ValueError/IndexError) with a message, or returns a result equal to the pure-torch
reference on the same arguments. A crash or out-of-bounds read kills the run (and fails CI).
"""
import importlib
import resource

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sparsecl
from sparsecl.formats import BlockSparseLayout, CSRLayout, _transpose_index_torch

# the op modules (sparsecl.ops re-exports functions of the same names)
bl, cl, ml, sl, sc = (importlib.import_module(f"sparsecl.ops.{m}") for m in
                      ("bsr_linear", "csr_linear", "masked_linear", "slimmable", "sparse_conv2d"))

from .._ref import address_sanitized
from ._strategies import fuzz_settings

pytestmark = pytest.mark.skipif(not sparsecl.build_info()["sparsecl_extension"], reason="fuzzes the C++ kernels")

S, P, D = [1, 1], [1, 1], [1, 1]


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bsr = BlockSparseLayout.random((20, 40), 0.5, 16, generator=g)
    csr = CSRLayout.random((7, 9), 0.4, generator=g)
    bconv = BlockSparseLayout.random((20, 18), 0.7, 16, generator=g)
    cconv = CSRLayout.random((4, 27), 0.4, generator=g)
    m79 = torch.rand(7, 9, generator=g) < 0.5
    free = (~csr.mask()).flatten().nonzero().squeeze(1)[:3]
    keep = torch.ones(csr.nnz, dtype=torch.bool)
    b = lambda l: (l.row_ptr, l.col_idx)  # noqa: E731
    t = lambda l: (l.t_row_ptr, l.t_col_idx, l.t_perm)  # noqa: E731
    c = lambda l: (l.row_idx, l.col_idx)  # noqa: E731
    return {
        "bsr_linear": ((r(3, 40), r(bsr.nnzb, 16, 16), *b(bsr), 20, r(20)), bl._reference_forward),
        "bsr_linear_dx": ((r(3, 20), r(bsr.nnzb, 16, 16), *t(bsr), 40), bl._reference_dx),
        "bsr_linear_dw": ((r(3, 20), r(3, 40), *c(bsr), 16), bl._reference_dw),
        "csr_linear": ((r(3, 9), r(csr.nnz), *b(csr), 7, r(7)), cl._reference_forward),
        "csr_linear_dx": ((r(3, 7), r(csr.nnz), *t(csr), 9), cl._reference_dx),
        "csr_linear_dw": ((r(3, 7), r(3, 9), *c(csr)), cl._reference_dw),
        "masked_linear": ((r(3, 9), r(7, 9), m79, r(7)), ml._reference_forward),
        "masked_linear_dx": ((r(3, 7), r(7, 9), m79), ml._reference_dx),
        "masked_linear_dw": ((r(3, 7), r(3, 9), m79), ml._reference_dw),
        "slimmable_linear": ((r(3, 5), r(7, 9), r(7), m79, 4), sl._reference_linear),
        "slimmable_linear_dx": ((r(3, 4), r(7, 9), m79, 5), sl._reference_linear_dx),
        "slimmable_linear_dw_": ((r(3, 4), r(3, 5), m79, r(7, 9)), None),
        "slimmable_linear_multi": ((r(3, 5), r(7, 9), r(7), m79, [5, 3], [4, 7]), sl._reference_multi),
        "slimmable_linear_multi_dx": (([r(3, 4), r(3, 7)], r(7, 9), m79, [5, 3], 5), sl._reference_multi_dx),
        "slimmable_linear_multi_dw_": (([r(3, 4), r(3, 7)], r(3, 5), m79, [5, 3], r(7, 9)), None),
        "slimmable_conv2d": ((r(2, 3, 5, 5), r(4, 5, 3, 3), r(4), torch.rand(4, 5, 3, 3, generator=g) < 0.5, 3, S, P, D),
                             sl._reference_conv2d),
        "slimmable_conv2d_dx": ((r(2, 3, 5, 5), r(4, 5, 3, 3), None, [2, 3, 5, 5], S, P, D), sl._reference_conv2d_dx),
        "slimmable_conv2d_dw_": ((r(2, 3, 5, 5), r(2, 3, 5, 5), None, r(4, 5, 3, 3), S, P, D), None),
        "csr_update": ((*b(csr), 9, keep, free), None),
        "csr_transpose": ((*b(csr), 9), _transpose_index_torch),
        "prune_regrow": (([r(7, 9)], [m79.clone()], [r(7, 9)], [r(7, 9)], torch.tensor([3]), []), None),
        "bsr_conv2d": ((r(1, 18, 4, 4), r(bconv.nnzb, 16, 16, 3, 3), *b(bconv), 20, r(20), S, P, D), sc._ref_bsr),
        "bsr_conv2d_dx": ((r(1, 20, 4, 4), r(bconv.nnzb, 16, 16, 3, 3), *t(bconv), [1, 18, 4, 4], S, P, D),
                          sc._ref_bsr_dx),
        "bsr_conv2d_dw": ((r(1, 20, 4, 4), r(1, 18, 4, 4), *c(bconv), 16, [3, 3], S, P, D), sc._ref_bsr_dw),
        "csr_conv2d": ((r(1, 3, 4, 4), r(cconv.nnz), *b(cconv), 4, [3, 3], r(4), S, P, D), sc._ref_csr),
        "csr_conv2d_dx": ((r(1, 4, 4, 4), r(cconv.nnz), *t(cconv), [1, 3, 4, 4], [3, 3], S, P, D), sc._ref_csr_dx),
        "csr_conv2d_dw": ((r(1, 4, 4, 4), r(1, 3, 4, 4), *c(cconv), [3, 3], S, P, D), sc._ref_csr_dw),
    }


CASES = _cases()
EXTREME = [-2**31, -2**31 + 1, -1, 0, 1, 2, 3, 15, 16, 17, 63, 2**31 - 1]
INTS = st.one_of(st.integers(-3, 70), st.sampled_from([-2**62, -2**31, 2**31 - 1, 2**31, 2**40]))
DTYPES = [torch.int32, torch.int64, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float64,
          torch.float16, torch.bfloat16]


def _mutate_tensor(draw, t):
    kind = draw(st.sampled_from(["values", "values", "dtype", "length", "rank", "stride", "empty", "special"]))
    if kind == "values" and not t.is_floating_point() and t.dtype != torch.bool:
        vals = draw(st.lists(st.one_of(st.sampled_from(EXTREME), st.integers(-2, 2 * max(t.numel(), 8))),
                             min_size=t.numel(), max_size=t.numel()))
        return torch.tensor(vals, dtype=torch.int64).clamp(-2**31, 2**31 - 1).to(t.dtype).view(t.shape)
    if kind == "values" and t.dtype == torch.bool:
        return ~t if draw(st.booleans()) else torch.ones_like(t)
    if kind in ("values", "special") and t.is_floating_point():
        return t.masked_fill(torch.rand(t.shape) < 0.3, draw(st.sampled_from([float("nan"), float("inf"),
                                                                                  -float("inf")])))
    if kind == "dtype":
        return t.to(draw(st.sampled_from(DTYPES)))
    if kind == "length":
        d = draw(st.integers(-3, 3))
        n0 = max(0, t.shape[0] + d) if t.dim() else 1
        return torch.zeros(n0, *t.shape[1:], dtype=t.dtype) if t.dim() else t.reshape(1)
    if kind == "rank":
        return t.unsqueeze(0) if draw(st.booleans()) or t.numel() == 0 else t.reshape(-1)[:1].reshape(())
    if kind == "stride":
        return torch.stack([t, t], -1)[..., 0] if t.dim() else t
    if kind == "empty":
        return t[:0] if t.dim() else t.reshape(1)[:0]
    return t


@st.composite
def mutated_call(draw, name):
    args, ref = CASES[name]
    args = [a.clone() if isinstance(a, torch.Tensor) else [x.clone() for x in a] if isinstance(a, list) and a and
            isinstance(a[0], torch.Tensor) else a for a in args]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(args) - 1))
        a = args[i]
        if isinstance(a, torch.Tensor):
            args[i] = _mutate_tensor(draw, a)
        elif a is None:
            continue
        elif isinstance(a, bool):
            continue
        elif isinstance(a, int):
            args[i] = draw(INTS)
        elif isinstance(a, list) and (not a or isinstance(a[0], torch.Tensor)):
            op = draw(st.sampled_from(["drop", "add", "mutate"]))
            if op == "drop" and a:
                args[i] = a[:-1]
            elif op == "add":
                args[i] = a + [a[0].clone() if a else torch.ones(7, 9, dtype=torch.bool)]
            elif a:
                j = draw(st.integers(0, len(a) - 1))
                args[i] = a[:j] + [_mutate_tensor(draw, a[j])] + a[j + 1:]
        elif isinstance(a, list):
            args[i] = draw(st.lists(INTS, min_size=0, max_size=5)) if draw(st.booleans()) else \
                [draw(INTS) if k == 0 else v for k, v in enumerate(a)]
    return args, ref


@pytest.fixture(autouse=True)
def memory_cap():
    """An accepted absurd size must fail as an allocation error, never take the machine's memory."""
    if address_sanitized():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(hard, 24 * 2**30) if hard != resource.RLIM_INFINITY else 24 * 2**30,
                                            hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _same(out, ref):
    if isinstance(out, torch.Size):
        assert out == ref, f"shape {tuple(out)} != reference {tuple(ref)}"
        return
    if isinstance(out, (list, tuple)):
        assert len(out) == len(ref)
        for o, r in zip(out, ref):
            _same(o, r)
        return
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    torch.testing.assert_close(out.double(), ref.double(), rtol=1e-3, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_valid_base_case_runs(name):
    """The unmutated calls are valid (so the mutations below start from something the kernel accepts)."""
    args, ref = CASES[name]
    out = getattr(torch.ops.sparsecl, name)(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    if ref is not None:
        _same(out, ref(*args))


FAMILIES = {f: sorted(n for n in CASES if n.startswith(p)) for f, p in
            [("bsr_linear", "bsr_linear"), ("csr_linear", "csr_"), ("masked_linear", "masked_linear"),
             ("slimmable", "slimmable"), ("prune_regrow", "prune_regrow"), ("sparse_conv2d", ("bsr_conv", "csr_conv"))]}
FAMILIES["csr_linear"] = [n for n in FAMILIES["csr_linear"] if not n.startswith("csr_conv")]


def test_families_cover_every_op():
    assert sorted(n for ops in FAMILIES.values() for n in ops) == sorted(CASES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@fuzz_settings(120)
@given(data=st.data())
def test_dispatcher_op_rejects_bad_input_or_matches_reference(family, data):
    """One fuzz target per op family; each example draws one of the family's ops."""
    name = data.draw(st.sampled_from(FAMILIES[family]))
    args, ref = data.draw(mutated_call(name))
    try:
        out = getattr(torch.ops.sparsecl, name)(*args)
    except (RuntimeError, ValueError, IndexError) as exc:
        assert str(exc).strip(), "the error must say what is wrong"
        return
    if ref is None:
        return
    try:
        expected = ref(*args)
    except Exception as exc:  # noqa: BLE001
        outs = out if isinstance(out, (list, tuple)) else [out]
        if all(o.numel() == 0 for o in outs):  # e.g. F.conv2d rejects 0 output channels; empty is right
            return
        pytest.fail(f"{name} accepted arguments its reference rejects ({type(exc).__name__}: {exc})")
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
    if all(bool(t.isfinite().all()) for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()):
        _same(out, expected)  # with inf/NaN inputs, skipping structural zeros (inf * 0) legitimately differs
    else:
        _same([o.shape for o in out] if isinstance(out, (list, tuple)) else out.shape,
              [e.shape for e in expected] if isinstance(expected, (list, tuple)) else expected.shape)


def test_csr_update_rejects_an_unsorted_row():
    """csr_update merges sorted rows; a row whose columns are not increasing is refused, not mis-merged.
    (It used to also take the transposed index, and trusted it: a bad t_perm wrote past its buffers. The
    transposed index is now rebuilt from the merged rows, so there is no such input left to trust.)"""
    (rp, ci, in_f, keep, grow), _ = CASES["csr_update"]
    with pytest.raises(RuntimeError, match="col_idx"):
        torch.ops.sparsecl.csr_update(rp, ci.flip(0), in_f, keep, grow)


def test_repeated_blocks_add_up_in_kernel_and_reference():
    """Regression (found by the fuzzer): the raw ops accept a repeated (row, col) block, which the C++ kernel
    adds up while the bsr reference kept only one; both now add up, like csr_linear's reference."""
    (x, v, rp, ci, out_f, bias), ref = CASES["bsr_linear"]
    dup = torch.zeros_like(ci)
    _same(torch.ops.sparsecl.bsr_linear(x, v, rp, dup, out_f, bias), ref(x, v, rp, dup, out_f, bias))


@pytest.mark.parametrize("stride", [[1, 1], [2, 1], [3, 3]])
def test_conv_kernel_larger_than_padded_input_is_rejected_for_every_stride(stride):
    """Regression (found by the fuzzer): the CPU output-size formula truncated toward zero, so with stride > 1 a
    kernel larger than the padded input gave a 1-pixel output instead of an error."""
    x = torch.randn(1, 18, 4, 4)
    bsr = BlockSparseLayout.random((20, 18), 1.0, 16)
    with pytest.raises(RuntimeError, match="too small"):
        torch.ops.sparsecl.bsr_conv2d(x, torch.randn(bsr.nnzb, 16, 16, 7, 3), bsr.row_ptr, bsr.col_idx, 20, None,
                                      stride, [1, 1], [1, 1])
    csr = CSRLayout.random((4, 18 * 21), 0.3)
    with pytest.raises(RuntimeError, match="too small"):
        torch.ops.sparsecl.csr_conv2d(x, torch.randn(csr.nnz), csr.row_ptr, csr.col_idx, 4, [7, 3], None, stride,
                                      [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="empty|small"):
        torch.ops.sparsecl.slimmable_conv2d(x, torch.randn(4, 18, 7, 3), None, None, 4, stride, [1, 1], [1, 1])
