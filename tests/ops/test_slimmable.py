"""slimmable_linear / slimmable_linear_multi / slimmable_conv2d against float64 references built from
PyTorch slicing: C++ CPU kernels, reference fallback, gradcheck, opcheck, torch.compile, the in-place
gradient sink (zero_grad modes, sandwich accumulation, autograd.grad, held buffers), the memory probe
(no full-size allocation per call) and bad input. Triton launchers: test_slimmable_triton.py."""
import pytest
import torch
import torch.nn.functional as F

import sparsecl.ops.slimmable as S
from sparsecl.bench.harness import allocations
from sparsecl.ops import slimmable_conv2d, slimmable_linear, slimmable_linear_multi

from .._ref import assert_close, noncontiguous

LINEAR = [  # (T, O, I, o, i)
    (0, 8, 8, 5, 3), (1, 1, 1, 1, 1), (7, 20, 33, 9, 17), (5, 16, 16, 16, 16), (6, 10, 12, 4, 0), (4, 9, 7, 0, 5),
    (3, 70, 50, 33, 50),
]
MASKS = [None, "random", "none_set", "all_set"]


def make_mask(kind, shape):
    if kind is None:
        return None
    if kind == "random":
        return torch.rand(shape) < 0.6
    return torch.full(shape, kind == "all_set")


def params(O, I, dtype=torch.float32, bias=True, conv_k=None):
    shape = (O, I) if conv_k is None else (O, I, *conv_k)
    w = torch.randn(shape, dtype=dtype, requires_grad=True)
    b = torch.randn(O, dtype=dtype, requires_grad=True) if bias else None
    return w, b


def ref_linear(x, w, b, o, mask):
    i = x.shape[-1]
    ws = w[:o, :i] if mask is None else w[:o, :i] * mask[:o, :i]
    return F.linear(x, ws, None if b is None else b[:o])


def ref_grads(fn, loss_weights, *tensors):
    """float64 copies of ``tensors`` (leaves), the reference output(s) and their grads under sum(g*y)."""
    leaves = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
    ys = fn(*leaves)
    ys_list = ys if isinstance(ys, (list, tuple)) else [ys]
    sum((y * g.double()).sum() for y, g in zip(ys_list, loss_weights)).backward()
    return ys, [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("T,O,I,o,i", LINEAR)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_backward(T, O, I, o, i, mask_kind, bias, seed):
    w, b = params(O, I, bias=bias)
    mask = make_mask(mask_kind, (O, I))
    x = torch.randn(T, i, requires_grad=True)
    y = slimmable_linear(x, w, b, o, mask=mask)
    g = torch.randn(T, o)
    (y * g).sum().backward()
    yr, (gx, gw, gb) = ref_grads(lambda x_, w_, b_: ref_linear(x_, w_, b_, o, mask), [g], x, w, b)
    assert_close(y, yr, torch.float32)
    assert_close(x.grad, gx, torch.float32)
    assert_close(w.grad, gw, torch.float32)  # full shape: zeros outside the slice (and outside the mask)
    if bias:
        assert_close(b.grad, gb, torch.float32)


def test_linear_leading_dims_noncontiguous_and_accumulation(seed):
    w, b = params(24, 40)
    x = noncontiguous(torch.randn(2, 3, 5, 30))
    y = slimmable_linear(x, w, b, 11)
    assert y.shape == (2, 3, 5, 11)
    assert_close(y, ref_linear(x.double(), w.double(), b.double(), 11, None))
    w.grad = torch.randn_like(w)  # existing gradient: the slice gradient is added to it
    before = w.grad.clone()
    y.sum().backward()
    _, (gw,) = ref_grads(lambda w_: ref_linear(x.double(), w_, b.double(), 11, None), [torch.ones(y.shape)], w)
    assert_close(w.grad, before.double() + gw, torch.float32)


@pytest.mark.parametrize("mask_kind", [None, "random"])
def test_linear_gradcheck_float64(mask_kind, seed):
    w, b = params(9, 12, torch.float64)
    mask = make_mask(mask_kind, (9, 12))
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, w_, b_: slimmable_linear(x_, w_, b_, 6, mask=mask), (x, w, b))


WIDTH_SETS = [
    [(16, 16), (12, 12), (8, 8), (4, 4)],  # nested, sandwich-like
    [(16, 3), (5, 16), (9, 9), (9, 9), (0, 7), (7, 0)],  # not nested, repeated, empty
    [(1, 1)],
]


@pytest.mark.parametrize("widths", WIDTH_SETS)
@pytest.mark.parametrize("mask_kind", [None, "random"])
@pytest.mark.parametrize("T", [0, 5])
def test_multi_matches_separate(widths, mask_kind, T, seed):
    w, b = params(16, 18)
    mask = make_mask(mask_kind, (16, 18))
    x = torch.randn(T, 17, requires_grad=True)
    ys = slimmable_linear_multi(x, w, b, widths, mask=mask)
    gs = [torch.randn(T, o) for _, o in widths]
    sum((y * g).sum() for y, g in zip(ys, gs)).backward()
    yr, (gx, gw, gb) = ref_grads(
        lambda x_, w_, b_: [ref_linear(x_[:, :i], w_, b_, o, mask) for i, o in widths], gs, x, w, b)
    for y, r in zip(ys, yr):
        assert_close(y, r, torch.float32)
    assert_close(x.grad, gx, torch.float32)
    assert_close(w.grad, gw, torch.float32)
    assert_close(b.grad, gb, torch.float32)


def test_multi_unused_outputs_and_gradcheck(seed):
    w, b = params(10, 12, torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    widths = [(12, 10), (6, 5), (3, 8)]
    ys = slimmable_linear_multi(x, w, b, widths)
    ys[1].sum().backward()  # only one width used: the others get no gradient
    _, (gx, gw) = ref_grads(lambda x_, w_: ref_linear(x_[:, :6], w_, b, 5, None), [torch.ones(3, 5)], x, w)
    assert_close(w.grad, gw)
    assert_close(x.grad, gx)
    mask = torch.rand(10, 12) < 0.5
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: slimmable_linear_multi(x_, w_, b_, widths, mask=mask), (x, w, b))


CONVS = [  # (N, O, I, o, i, k, stride, padding, dilation, H, W)
    (2, 8, 6, 5, 4, (3, 3), 1, 1, 1, 7, 6),
    (1, 4, 4, 4, 4, (1, 1), 1, 0, 1, 5, 5),
    (3, 7, 5, 2, 5, (3, 2), (2, 1), (0, 1), (1, 2), 9, 8),
    (0, 4, 3, 2, 2, (3, 3), 1, 1, 1, 4, 4),
    (2, 6, 6, 3, 1, (2, 2), 2, 0, 2, 6, 7),
]


@pytest.mark.parametrize("N,O,I,o,i,k,stride,padding,dilation,H,W", CONVS)
@pytest.mark.parametrize("mask_kind", [None, "random"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_forward_backward(N, O, I, o, i, k, stride, padding, dilation, H, W, mask_kind, channels_last, seed):
    w, b = params(O, I, conv_k=k)
    mask = make_mask(mask_kind, tuple(w.shape))
    x = torch.randn(N, i, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = slimmable_conv2d(x, w, b, o, stride, padding, dilation, mask=mask)
    if channels_last and N > 0 and i > 1:  # with one channel both formats coincide
        assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(y.shape)

    def ref(x_, w_, b_):
        ws = w_[:o, :i] if mask is None else w_[:o, :i] * mask[:o, :i]
        return F.conv2d(x_, ws, b_[:o], stride, padding, dilation)

    yr, (gx, gw, gb) = ref_grads(ref, [g], x, w, b)
    (y * g).sum().backward()
    assert_close(y, yr, torch.float32)
    assert_close(x.grad, gx, torch.float32)
    assert_close(w.grad, gw, torch.float32)
    assert_close(b.grad, gb, torch.float32)


def test_conv2d_channels_last_weight(seed):
    """A weight whose [i, kh, kw] are not packed takes the copying path; results and .grad stay right."""
    w = torch.randn(6, 5, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w.grad = torch.zeros_like(w)  # channels_last gradient too: accumulated through a temporary
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    y = slimmable_conv2d(x, w, None, 3, 1, 1, 1)
    y.sum().backward()
    yr, (gx, gw) = ref_grads(lambda x_, w_: F.conv2d(x_, w_[:3, :4], None, 1, 1), [torch.ones(y.shape)], x, w)
    assert_close(y, yr, torch.float32)
    assert_close(x.grad, gx, torch.float32)
    assert_close(w.grad, gw, torch.float32)


def test_conv2d_gradcheck_float64(seed):
    w, b = params(5, 4, torch.float64, conv_k=(3, 3))
    mask = torch.rand(w.shape) < 0.5
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, w_, b_: slimmable_conv2d(x_, w_, b_, 4, 2, 1, 1, mask=mask),
                                    (x, w, b))


def test_reference_kernels_match_cpp(seed):
    """The pure-torch fallback (used without the extension) computes the same as the C++ kernels."""
    ops = torch.ops.sparsecl
    w = torch.randn(12, 10, dtype=torch.float64)
    b = torch.randn(12, dtype=torch.float64)
    m = torch.rand(12, 10) < 0.5
    x = torch.randn(5, 8, dtype=torch.float64)
    g = torch.randn(5, 7, dtype=torch.float64)
    assert_close(S._reference_linear(x, w, b, m, 7), ops.slimmable_linear(x, w, b, m, 7))
    assert_close(S._reference_linear_dx(g, w, m, 8), ops.slimmable_linear_dx(g, w, m, 8))
    a, c = torch.randn(12, 10, dtype=torch.float64), None
    c = a.clone()
    S._reference_linear_dw_(g, x, m, a)
    ops.slimmable_linear_dw_(g, x, m, c)
    assert_close(a, c)
    iw, ow = [8, 3, 5], [7, 12, 2]
    for r, k in zip(S._reference_multi(x, w, b, m, iw, ow), ops.slimmable_linear_multi(x, w, b, m, iw, ow)):
        assert_close(r, k)
    gs = [torch.randn(5, o, dtype=torch.float64) for o in ow]
    assert_close(S._reference_multi_dx(gs, w, m, iw, 8), ops.slimmable_linear_multi_dx(gs, w, m, iw, 8))
    a, c = torch.zeros(12, 10, dtype=torch.float64), torch.zeros(12, 10, dtype=torch.float64)
    S._reference_multi_dw_(gs, x, m, iw, a)
    ops.slimmable_linear_multi_dw_(gs, x, m, iw, c)
    assert_close(a, c)
    wc, mc = torch.randn(6, 5, 3, 3, dtype=torch.float64), torch.rand(6, 5, 3, 3) < 0.5
    xc = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    geo = ([2, 1], [1, 0], [1, 2])
    y = ops.slimmable_conv2d(xc, wc, None, mc, 3, *geo)
    assert_close(S._reference_conv2d(xc, wc, None, mc, 3, *geo), y)
    gy = torch.randn(y.shape, dtype=torch.float64)
    assert_close(S._reference_conv2d_dx(gy, wc, mc, list(xc.shape), *geo),
                 ops.slimmable_conv2d_dx(gy, wc, mc, list(xc.shape), *geo))
    a, c = torch.zeros_like(wc), torch.zeros_like(wc)
    S._reference_conv2d_dw_(gy, xc, mc, a, *geo)
    ops.slimmable_conv2d_dw_(gy, xc, mc, c, *geo)
    assert_close(a, c)


@pytest.mark.parametrize("masked", [False, True])
def test_opcheck(masked, seed):
    ops = torch.ops.sparsecl
    w, b = torch.randn(12, 10), torch.randn(12)
    m = torch.rand(12, 10) < 0.5 if masked else None
    x, g = torch.randn(5, 8), torch.randn(5, 7)
    torch.library.opcheck(ops.slimmable_linear.default, (x, w, b, m, 7))
    torch.library.opcheck(ops.slimmable_linear.default, (x, w, None, m, 0))
    torch.library.opcheck(ops.slimmable_linear_dx.default, (g, w, m, 8))
    torch.library.opcheck(ops.slimmable_linear_dw_.default, (g, x, m, torch.zeros(12, 10)))
    iw, ow = [8, 3, 5], [7, 12, 2]
    torch.library.opcheck(ops.slimmable_linear_multi.default, (x, w, b, m, iw, ow))
    gs = [torch.randn(5, o) for o in ow]
    torch.library.opcheck(ops.slimmable_linear_multi_dx.default, (gs, w, m, iw, 8))
    torch.library.opcheck(ops.slimmable_linear_multi_dw_.default, (gs, x, m, iw, torch.zeros(12, 10)))
    wc = torch.randn(6, 5, 3, 3)
    mc = torch.rand(6, 5, 3, 3) < 0.5 if masked else None
    xc = torch.randn(2, 4, 6, 5)
    geo = ([2, 1], [1, 0], [1, 2])
    torch.library.opcheck(ops.slimmable_conv2d.default, (xc, wc, b[:6], mc, 3, *geo))
    torch.library.opcheck(ops.slimmable_conv2d.default,
                          (xc.contiguous(memory_format=torch.channels_last), wc, None, mc, 3, *geo))
    gy = torch.randn(ops.slimmable_conv2d(xc, wc, None, mc, 3, *geo).shape)
    torch.library.opcheck(ops.slimmable_conv2d_dx.default, (gy, wc, mc, list(xc.shape), *geo))
    torch.library.opcheck(ops.slimmable_conv2d_dw_.default, (gy, xc, mc, torch.zeros(6, 5, 3, 3), *geo))


def test_compile_fullgraph(seed):
    w, b = params(12, 16)
    mask = torch.rand(12, 16) < 0.7
    wc = torch.randn(6, 4, 3, 3, requires_grad=True)

    def f(x, xc):
        y = slimmable_linear(x, w, b, 9, mask=mask)
        ys = slimmable_linear_multi(x, w, b, [(10, 9), (5, 3)])
        z = slimmable_conv2d(xc, wc, None, 5, 1, 1, 1)
        return y.sum() + ys[0].sum() + 2 * ys[1].sum() + z.sum()

    x, xc = torch.randn(3, 10), torch.randn(2, 3, 5, 5)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, xc)
    out.backward()
    got = [w.grad.clone(), b.grad.clone(), wc.grad.clone()]
    for p in (w, b, wc):
        p.grad = None
    ref = f(x, xc)
    ref.backward()
    assert_close(out, ref)
    for a, r in zip(got, (w.grad, b.grad, wc.grad)):
        assert_close(a, r)


class TestGradientSink:
    """Where the weight gradient goes: in place into .grad on .backward(), through autograd otherwise."""

    def test_set_to_none_reuses_one_buffer(self, seed):
        w, b = params(16, 16)
        x = torch.randn(4, 8)
        slimmable_linear(x, w, b, 8).sum().backward()
        first = w.grad.data_ptr()
        w.grad = None
        slimmable_linear(x, w, b, 4).sum().backward()
        assert w.grad.data_ptr() == first
        _, (gw,) = ref_grads(lambda w_: ref_linear(x.double(), w_, None, 4, None), [torch.ones(4, 4)], w)
        assert_close(w.grad, gw, torch.float32)  # zeroed before reuse: nothing left from the first step

    def test_held_gradient_is_not_overwritten(self, seed):
        w, b = params(16, 16)
        x = torch.randn(4, 8)
        slimmable_linear(x, w, b, 8).sum().backward()
        kept = w.grad
        snapshot = kept.clone()
        w.grad = None
        slimmable_linear(x, w, b, 4).sum().backward()
        assert w.grad.data_ptr() != kept.data_ptr()
        assert torch.equal(kept, snapshot)

    def test_sandwich_accumulates_all_widths(self, seed):
        w, b = params(32, 32)
        x = torch.randn(5, 32)
        opt = torch.optim.SGD([w, b], lr=0.1)
        for set_to_none in (True, False, True):
            opt.zero_grad(set_to_none=set_to_none)
            widths = [32, 8, 20]
            for k in widths:
                slimmable_linear(x[:, :k], w, b, k).pow(2).sum().backward()
            _, (gw, gb) = ref_grads(
                lambda w_, b_: sum(ref_linear(x[:, :k].double(), w_, b_, k, None).pow(2).sum() for k in widths),
                [torch.ones(())], w, b)
            assert_close(w.grad, gw, torch.float32)
            assert_close(b.grad, gb, torch.float32)
            opt.step()

    def test_autograd_grad_returns_gradient_and_leaves_grad_alone(self, seed):
        w, b = params(10, 10)
        x = torch.randn(3, 6, requires_grad=True)
        gw, gx = torch.autograd.grad(slimmable_linear(x, w, b, 4).sum(), (w, x))
        assert w.grad is None and b.grad is None
        _, (rx, rw) = ref_grads(lambda x_, w_: ref_linear(x_, w_, b.double(), 4, None), [torch.ones(3, 4)], x, w)
        assert_close(gw, rw, torch.float32)
        assert_close(gx, rx, torch.float32)
        slimmable_linear(x, w, b, 4).sum().backward(inputs=[x])
        assert w.grad is None

    def test_hooks_fire(self, seed):
        w, b = params(10, 10)
        fired = []
        w.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad.clone()))
        slimmable_linear(torch.randn(3, 6), w, b, 4).sum().backward()
        assert len(fired) == 1 and torch.equal(fired[0], w.grad)

    def test_non_leaf_weight(self, seed):
        base = torch.randn(8, 8, requires_grad=True)
        w = base * 2
        slimmable_linear(torch.ones(2, 5), w, None, 3).sum().backward()
        expect = torch.zeros(8, 8)
        expect[:3, :5] = 4.0
        assert_close(base.grad, expect)


def _full_allocs(fn, nbytes):
    return [s for s in allocations(fn) if s >= nbytes]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_memory_probe_no_full_size_allocation(set_to_none, seed):
    """The backward of a width slice allocates nothing of the full weight's size (after the first
    step attached the persistent .grad buffer), while PyTorch's slice backward does: the probe works."""
    O, I = 256, 256
    full = O * I * 4
    w, b = params(O, I)
    wc = torch.randn(64, 64, 3, 3, requires_grad=True)
    x, xc = torch.randn(8, 128), torch.randn(2, 32, 6, 6)

    def step(fn):
        def run():
            for p in (w, b, wc):
                if set_to_none:
                    p.grad = None
            fn().sum().backward()
        run()  # first step: attaches .grad
        return run

    assert _full_allocs(step(lambda: F.linear(x, w[:128, :128], b[:128])), full), "probe missed torch's zeros"
    # unmasked: not even the active slice (128 x 128) is copied, forward or backward
    assert not _full_allocs(step(lambda: slimmable_linear(x, w, b, 128)), full // 4)
    mask = torch.rand(O, I) < 0.5
    assert not _full_allocs(step(lambda: slimmable_linear(x, w, b, 100, mask=mask)), full)
    multi = step(lambda: sum(y.sum() for y in slimmable_linear_multi(x, w, b, [(128, 200), (64, 64), (100, 7)])))
    assert not _full_allocs(multi, full)
    assert not _full_allocs(step(lambda: slimmable_conv2d(xc, wc, None, 32, 1, 1, 1)), wc.numel() * 4)


class TestBadInput:
    def setup_method(self):
        self.w, self.b = torch.randn(8, 6), torch.randn(8)

    def test_in_width_too_large(self):
        with pytest.raises(ValueError, match="in width 7 outside"):
            slimmable_linear(torch.randn(2, 7), self.w, self.b, 4)

    def test_out_width(self):
        with pytest.raises(ValueError, match="out_features 9 outside"):
            slimmable_linear(torch.randn(2, 6), self.w, self.b, 9)

    def test_bias_must_be_full_width(self):
        with pytest.raises(ValueError, match="full-width bias"):
            slimmable_linear(torch.randn(2, 6), self.w, self.b[:4], 4)

    def test_mask_shape_and_dtype(self):
        with pytest.raises(ValueError, match="mask must be bool"):
            slimmable_linear(torch.randn(2, 6), self.w, self.b, 4, mask=torch.ones(8, 6))
        with pytest.raises(ValueError, match="mask must be bool"):
            slimmable_linear(torch.randn(2, 6), self.w, self.b, 4, mask=torch.ones(8, 5, dtype=torch.bool))

    def test_dtype_mismatch(self):
        with pytest.raises(RuntimeError, match="dtype"):
            slimmable_linear(torch.randn(2, 6, dtype=torch.float64), self.w, self.b, 4)

    def test_unsupported_dtype_on_cpu(self):
        with pytest.raises(RuntimeError, match="unsupported dtype"):
            slimmable_linear(torch.randn(2, 6).half(), self.w.half(), None, 4)

    def test_multi_widths(self):
        with pytest.raises(ValueError, match="at least one"):
            slimmable_linear_multi(torch.randn(2, 6), self.w, self.b, [])
        with pytest.raises(ValueError, match="in width 7"):
            slimmable_linear_multi(torch.randn(2, 6), self.w, self.b, [(7, 2)])

    def test_raw_ops(self):
        ops = torch.ops.sparsecl
        with pytest.raises(RuntimeError, match="outside"):
            ops.slimmable_linear(torch.randn(2, 7), self.w, None, None, 3)
        with pytest.raises(RuntimeError, match="entries but out_widths"):
            ops.slimmable_linear_multi(torch.randn(2, 6), self.w, None, None, [2, 3], [2])
        with pytest.raises(RuntimeError, match="weight dtype Double != input dtype Float"):
            ops.slimmable_linear_dw_(torch.randn(2, 3), torch.randn(2, 4), None, torch.zeros(8, 6, dtype=torch.float64))

    def test_conv(self):
        w = torch.randn(4, 3, 3, 3)
        with pytest.raises(ValueError, match="channels 5 outside"):
            slimmable_conv2d(torch.randn(1, 5, 6, 6), w, None, 2)
        with pytest.raises(ValueError, match="4-D"):
            slimmable_conv2d(torch.randn(5, 6, 6), w, None, 2)
        with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
            slimmable_conv2d(torch.randn(1, 3, 2, 2), w, None, 2)
        with pytest.raises(RuntimeError, match="stride must be >= 1"):
            slimmable_conv2d(torch.randn(1, 3, 6, 6), w, None, 2, stride=0)


@pytest.mark.parametrize("bucket_view", [False, True])
def test_ddp_single_process_sandwich(bucket_view, seed, tmp_path):
    """DDP (gloo, one process): in-place slice gradients reach the reducer, with and without no_sync."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparsecl.nn import SlimmableLinear, width

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        net = torch.nn.Sequential(SlimmableLinear(12, 16), torch.nn.ReLU(), SlimmableLinear(16, 3, slim_out=False))
        ref = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
        ddp = DDP(net, gradient_as_bucket_view=bucket_view)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        x = torch.randn(6, 12)
        for set_to_none in (True, False, True):
            opt.zero_grad(set_to_none=set_to_none)
            for r in ref:
                r.grad = None
            with ddp.no_sync():
                for w in (0.25, 0.5):
                    with width(net, w):
                        ddp(x).pow(2).sum().backward()
            ddp(x).pow(2).sum().backward()  # full width, synchronised
            for w in (0.25, 0.5, 1.0):
                h = max(1, int(16 * w + 0.5))
                y = F.linear(torch.relu(F.linear(x, ref[0][:h], ref[1][:h])), ref[2][:, :h], ref[3])
                y.pow(2).sum().backward()
            for p, r in zip(net.parameters(), ref):
                assert_close(p.grad, r.grad, torch.float32)
            opt.step()
            with torch.no_grad():
                for p, r in zip(net.parameters(), ref):
                    r.copy_(p)
    finally:
        dist.destroy_process_group()
