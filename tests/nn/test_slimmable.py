"""SlimmableLinear / SlimmableConv2d / SwitchableBatchNorm2d, width(), recalibrate_bn, count_macs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecl
from sparsecl.nn import (SlimmableConv2d, SlimmableLinear, SwitchableBatchNorm2d, active_channels, count_macs,
                         recalibrate_bn, width)

from .._ref import assert_close


def small_net():
    return nn.Sequential(
        SlimmableConv2d(3, 8, 3, padding=1, slim_in=False), SwitchableBatchNorm2d(8), nn.ReLU(),
        SlimmableConv2d(8, 16, 3, stride=2, padding=1), SwitchableBatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), SlimmableLinear(16, 10, slim_out=False))


def test_public_names():
    for name in ("SlimmableLinear", "SlimmableConv2d", "SwitchableBatchNorm2d", "width", "recalibrate_bn"):
        assert hasattr(sparsecl.nn, name)


def test_active_channels_rounding():
    assert [active_channels(w, 10) for w in (0.01, 0.25, 0.5, 0.75, 1.0)] == [1, 3, 5, 8, 10]
    for bad in (0.0, 1.5, -1, "0.5"):
        with pytest.raises(ValueError, match="width must be"):
            active_channels(bad, 10)


def test_linear_from_dense_and_slices(seed):
    lin = nn.Linear(12, 9)
    s = SlimmableLinear.from_dense(lin)
    x = torch.randn(4, 12)
    assert_close(s(x), lin(x))
    with width(s, 0.5):
        assert s.active_out == 5
        y = s(x[:, :7])
        assert_close(y, F.linear(x[:, :7], lin.weight[:5, :7], lin.bias[:5]))
        aw = s.active_weight()
        assert aw.shape == (5, 7) and aw.data_ptr() == s.weight.data_ptr()  # a view, not a copy
    assert s.active_out == 9
    assert s.dense_weight() is s.weight
    assert s.mask().all() and s.mask().shape == (9, 12)


def test_conv_from_dense_nchw_and_channels_last(seed):
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, dilation=1)
    s = SlimmableConv2d.from_dense(conv)
    x = torch.randn(2, 6, 9, 9)
    assert_close(s(x), conv(x))
    with width(s, 0.5):
        xs = x[:, :3].contiguous(memory_format=torch.channels_last)
        y = s(xs)
        assert_close(y, F.conv2d(xs, conv.weight[:4, :3], conv.bias[:4], 2, 1))
        assert y.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="groups=1"):
        SlimmableConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))


def test_slim_in_false_and_slim_out_false(seed):
    s = SlimmableLinear(8, 6, slim_in=False, slim_out=False)
    with width(s, 0.25):
        assert s.active_out == 6
        with pytest.raises(ValueError, match="exactly 8"):
            s(torch.randn(2, 4))
    with pytest.raises(ValueError, match="at most 8"):
        SlimmableLinear(8, 6)(torch.randn(2, 9))


def test_width_config_mapping_patterns_and_restore():
    net = nn.Sequential(nn.ModuleDict({"enc1": SlimmableLinear(8, 8), "enc2": SlimmableLinear(8, 8)}),
                        SlimmableLinear(8, 20))
    with width(net, {"0.*": 0.5, "0.enc2": 0.25}):  # exact name wins over the pattern
        assert (net[0]["enc1"].active_out, net[0]["enc2"].active_out, net[1].active_out) == (4, 2, 20)
        with width(net, {"1": 0.1}):  # nests; unmatched modules keep their width
            assert (net[0]["enc1"].active_out, net[1].active_out) == (4, 2)
        assert net[1].active_out == 20
    assert all(m.active_out == m.weight.shape[0] for m in net.modules() if isinstance(m, SlimmableLinear))
    with pytest.raises(RuntimeError):
        with width(net, 0.5):
            raise RuntimeError("boom")
    assert net[1].active_out == 20  # restored after an exception
    with pytest.raises(ValueError, match="matches no slimmable module"):
        with width(net, {"decoder*": 0.5}):
            pass
    with pytest.raises(ValueError, match="width must be"):
        with width(net, {"1": 0.0}):
            pass
    assert net[1].active_out == 20


def test_switchable_bn_per_width_statistics(seed):
    bn = SwitchableBatchNorm2d(8)
    assert bn.channels == (2, 4, 6, 8)
    x = torch.randn(4, 4, 3, 3) + 3
    bn(x)
    assert bn.bn[1].num_batches_tracked == 1 and bn.bn[3].num_batches_tracked == 0
    assert_close(bn.bn[1].running_mean, 0.1 * x.mean((0, 2, 3)))
    with pytest.raises(ValueError, match="got an input with 5"):
        bn(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="repeated channel counts"):
        SwitchableBatchNorm2d(2, widths=(0.25, 0.5))
    dense = nn.BatchNorm2d(8)
    dense.running_mean.normal_()
    s = SwitchableBatchNorm2d.from_dense(dense, widths=(0.5, 1.0))
    assert_close(s.bn[0].running_mean, dense.running_mean[:4])


def test_recalibrate_bn_matches_exact_statistics(seed):
    net = small_net()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    net.eval()
    untouched = net[1].bn[1].running_mean.clone()
    recalibrate_bn(net, iter(batches), [0.25, 1.0])
    assert not net.training and net[1].bn[0].momentum == 0.1
    assert torch.equal(net[1].bn[1].running_mean, untouched)  # width 0.5 was not recalibrated
    with width(net, 0.25):  # exact mean over the batches of the first conv's output at width 0.25
        feats = torch.cat([net[0](b) for b in batches])
    stats = feats.transpose(0, 1).reshape(2, -1)
    # cumulative average of per-batch means (equal batch sizes): the mean over all batches
    assert_close(net[1].bn[0].running_mean, stats.mean(1))
    assert net[1].bn[0].num_batches_tracked == 3


def test_masked_layer_composes_sparsity_and_width(seed):
    mask = torch.rand(10, 12) < 0.5
    s = SlimmableLinear(12, 10, mask=mask)
    x = torch.randn(3, 7)
    with width(s, 0.5):
        y = s(x)
        assert_close(y, F.linear(x, (s.weight * mask)[:5, :7], s.bias[:5]))
        assert_close(s.active_weight(), (s.weight * mask)[:5, :7])
    y.sum().backward()
    assert not s.weight.grad[~mask].any() and not s.weight.grad[5:].any()
    assert s.mask() is s.weight_mask
    # state_dict carries the mask; a dense module becomes sparse on load
    d = SlimmableLinear(12, 10)
    d.load_state_dict(s.state_dict())
    assert torch.equal(d.weight_mask, mask)
    d.load_state_dict(SlimmableLinear(12, 10).state_dict())
    assert d.weight_mask is None


def test_macs(seed):
    lin = SlimmableLinear(16, 8)
    with width(lin, 0.5):
        assert lin.macs((2, 5, 10)) == 10 * 10 * 4
    conv = SlimmableConv2d(4, 6, 3, stride=2, padding=1)
    assert conv.macs((2, 4, 8, 8)) == 2 * 4 * 4 * 6 * 4 * 9
    net = small_net()
    x = torch.randn(2, 3, 8, 8)
    with width(net, 0.5):
        expect = net[0].macs((2, 3, 8, 8)) + net[3].macs((2, 4, 8, 8)) + net[8].macs((2, 8))
        assert count_macs(net, x) == expect
    assert count_macs(net, x) > expect
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[0, :3] = True
    assert SlimmableLinear(16, 8, mask=mask).macs((5, 16)) == 15
    plain = nn.Sequential(nn.Linear(4, 6), nn.Conv2d(1, 2, 3, groups=1))
    assert count_macs(plain[:1], torch.randn(3, 4)) == 3 * 4 * 6


def test_sandwich_training_matches_plain_slicing(seed):
    torch.manual_seed(seed)
    net = small_net()
    ref = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    x = torch.randn(4, 3, 8, 8)
    for set_to_none in (True, False):
        for p in list(net.parameters()) + ref:
            p.grad = None if set_to_none else (torch.zeros_like(p) if p.grad is None else p.grad.zero_())
        for w in (1.0, 0.25, 0.5):
            with width(net, w):
                net(x).pow(2).sum().backward()
        names = [n for n, _ in net.named_parameters()]
        params = dict(zip(names, ref))

        def fwd(w):
            h = x
            c1 = active_channels(w, 8)
            c2 = active_channels(w, 16)
            h = F.conv2d(h, params["0.weight"][:c1], params["0.bias"][:c1], 1, 1)
            bn = net[1].bn[net[1].index(c1)]
            h = F.relu(F.batch_norm(h, None, None, params[f"1.bn.{net[1].index(c1)}.weight"],
                                    params[f"1.bn.{net[1].index(c1)}.bias"], True, 0.0, bn.eps))
            h = F.conv2d(h, params["3.weight"][:c2, :c1], params["3.bias"][:c2], 2, 1)
            k = net[4].index(c2)
            h = F.relu(F.batch_norm(h, None, None, params[f"4.bn.{k}.weight"], params[f"4.bn.{k}.bias"], True,
                                    0.0, bn.eps))
            h = h.mean((2, 3))
            return F.linear(h, params["8.weight"][:, :c2], params["8.bias"])

        for w in (1.0, 0.25, 0.5):
            fwd(w).pow(2).sum().backward()
        for (n, p), r in zip(net.named_parameters(), ref):
            zero = torch.zeros_like(p)  # BatchNorms of unused widths get no gradient
            assert_close(zero if p.grad is None else p.grad, zero if r.grad is None else r.grad, torch.float32)


def test_compile_layer_fullgraph(seed):
    net = nn.Sequential(SlimmableLinear(16, 12), nn.ReLU(), SlimmableLinear(12, 4, slim_out=False))
    x = torch.randn(3, 16)
    with width(net, 0.5):
        out = torch.compile(net, fullgraph=True, backend="aot_eager")(x[:, :8])
        out.sum().backward()
        got = [p.grad.clone() for p in net.parameters()]
        for p in net.parameters():
            p.grad = None
        ref = net(x[:, :8])
        ref.sum().backward()
    assert_close(out, ref)
    for g, p in zip(got, net.parameters()):
        assert_close(g, p.grad)
