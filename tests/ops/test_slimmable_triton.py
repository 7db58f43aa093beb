"""Triton launchers of the slimmable ops (kernels/slimmable.py) in the interpreter on CPU tensors,
against the same float64 reference as the C++ kernels; on a GPU also through the op with backend "triton"."""
import pytest
import torch

import sparsecl
import sparsecl.ops.slimmable as S
from sparsecl.kernels_loader import triton_available

from .._ref import assert_close

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not available")

WIDTHS = [
    ([37], [30]),
    ([40, 30, 20, 10], [37, 28, 19, 9]),  # nested (sandwich)
    ([40, 17, 9, 33, 5, 0], [37, 20, 30, 3, 1, 6]),  # unsorted, more than one launch, empty widths
]


def case(T, dtype, mask, transposed_weight, seed_shape=(37, 41)):
    O, I = seed_shape
    w = torch.randn(I, O, dtype=dtype).T if transposed_weight else torch.randn(O, I, dtype=dtype)
    b = torch.randn(O, dtype=dtype)
    m = torch.rand(O, I) < 0.5 if mask else None
    x = torch.randn(T, 2 * 40, dtype=dtype)[:, ::2]  # non-contiguous
    return x, w, b, m


@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("T", [0, 1, 19])
def test_multi_forward_dx_dw(widths, mask, T, seed):
    from sparsecl.kernels import slimmable as K

    iw, ow = widths
    x, w, b, m = case(T, torch.float32, mask, transposed_weight=T == 19)
    xd, wd, bd = x.double(), w.double(), b.double()
    for y, r in zip(K.slimmable_linear_multi(x, w, b, m, iw, ow), S._reference_multi(xd, wd, bd, m, iw, ow)):
        assert y.shape == r.shape
        assert_close(y, r, torch.float32)
    gs = [torch.randn(T, o) for o in ow]
    gd = [g.double() for g in gs]
    assert_close(K.slimmable_linear_multi_dx(gs, w, m, iw, 40), S._reference_multi_dx(gd, wd, m, iw, 40),
                 torch.float32)
    gw = torch.randn(37, 41)
    expect = gw.double()
    S._reference_multi_dw_(gd, xd, m, iw, expect)
    K.slimmable_linear_multi_dw_(gs, x, m, iw, gw)  # accumulates into the existing gradient
    assert_close(gw, expect, torch.float32)


@pytest.mark.parametrize("mask", [False, True])
def test_single_width_launchers_float64(mask, seed):
    from sparsecl.kernels import slimmable as K

    x, w, b, m = case(7, torch.float64, mask, transposed_weight=False)
    x = x[:, :23]
    assert_close(K.slimmable_linear_forward(x, w, b, m, 11), S._reference_linear(x, w, b, m, 11))
    assert_close(K.slimmable_linear_forward(x, w, None, m, 0), S._reference_linear(x, w, None, m, 0))
    g = torch.randn(7, 11, dtype=torch.float64)
    assert_close(K.slimmable_linear_dx(g, w, m, 23), S._reference_linear_dx(g, w, m, 23))
    gw, expect = torch.zeros(37, 41, dtype=torch.float64), torch.zeros(37, 41, dtype=torch.float64)
    K.slimmable_linear_dw_(g, x, m, gw)
    S._reference_linear_dw_(g, x, m, expect)
    assert_close(gw, expect)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_op_on_gpu_matches_cpu(backend, seed):
    w = torch.randn(300, 260, requires_grad=True)
    b = torch.randn(300, requires_grad=True)
    x = torch.randn(77, 260)
    widths = [(260, 300), (195, 225), (130, 150), (65, 75)]
    mask = torch.rand(300, 260) < 0.5
    wc, bc = (t.detach().cuda().requires_grad_(True) for t in (w, b))
    with sparsecl.use_backend(backend, "slimmable_linear"):
        ys = sparsecl.ops.slimmable_linear_multi(x.cuda(), wc, bc, widths, mask=mask.cuda())
        sum(y.sum() for y in ys).backward()
    ref = sparsecl.ops.slimmable_linear_multi(x, w, b, widths, mask=mask)
    sum(y.sum() for y in ref).backward()
    for y, r in zip(ys, ref):
        assert_close(y, r, torch.float32)
    assert_close(wc.grad, w.grad, torch.float32)
    assert_close(bc.grad, b.grad, torch.float32)
