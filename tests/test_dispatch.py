"""Dense/sparse dispatch (sparsecl.dispatch, sparsecl.ops.dense_or_sparse): both paths give the same forward, dX,
dValues and dBias (float64) on every sparse layer and every per-direction mix; gradcheck; the dense weight is kept
incrementally (one buffer, refreshed after optimizer steps and topology changes, never stale); switching paths in
the middle of training (optimizer step + DST update across the switch) loses nothing; the override API and its
precedence; the calibration cache (written atomically, reused, robust to corruption, absence, unwritable dirs)."""
import itertools
import json
import os

import pytest
import torch
from torch import nn

import sparsecl
from sparsecl import dispatch
from sparsecl.dst import DST
from sparsecl.nn import BlockSparseLinear, SparseConv2d, SparseLinear
from sparsecl.ops.dense_or_sparse import Choice, csr_conv2d_spec, dense_or_sparse

from ._ref import assert_close

F64 = torch.float64
MIXES = [Choice(*c) for c in itertools.product(("sparse", "dense"), repeat=3)]


def _conv(structure, cin=19, cout=21, k=3, stride=2, padding=1, dilation=1, density=0.4):
    return SparseConv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, density=density,
                        structure=structure, block_size=16, dtype=F64)


LAYERS = {
    "conv-csr-s2": (lambda: _conv("unstructured"), (3, 19, 9, 8)),
    "conv-csr-1x1-s2": (lambda: _conv("unstructured", k=1, padding=0), (2, 19, 7, 7)),
    "conv-csr-dil": (lambda: _conv("unstructured", stride=1, padding=2, dilation=2), (2, 19, 6, 5)),
    "conv-block-s1": (lambda: _conv("block", cout=36, stride=1, density=0.5), (2, 19, 6, 7)),
    "conv-csr-d0": (lambda: _conv("unstructured", density=0.0), (2, 19, 5, 5)),
    "conv-csr-d1": (lambda: _conv("unstructured", density=1.0), (2, 19, 5, 5)),
    "linear-csr": (lambda: SparseLinear(37, 29, density=0.2, dtype=F64), (2, 3, 37)),
    "linear-csr-d1": (lambda: SparseLinear(17, 9, density=1.0, mode="csr", dtype=F64), (5, 17)),
    "linear-block": (lambda: BlockSparseLinear(40, 50, density=0.5, block_size=16, dtype=F64), (7, 40)),
}


def _grads(layer, x, choice, g=None):
    """(y, dx, dvalues, dbias) of one call under ``choice`` (the layer's own override)."""
    layer.dispatch = choice._asdict()
    x = x.detach().requires_grad_()
    y = layer(x)
    g = torch.randn_like(y) if g is None else g
    wrt = [x, layer.values] + ([layer.bias] if layer.bias is not None else [])
    return (y, *torch.autograd.grad(y, wrt, g)), g


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("fmt", ["nchw", "channels_last", "noncontiguous"])
def test_paths_agree(seed, name, fmt):
    make, shape = LAYERS[name]
    layer = make()
    x = torch.randn(shape, dtype=F64)
    if fmt != "nchw":
        if x.dim() != 4 and fmt == "channels_last":
            pytest.skip("linear input")
        x = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x.transpose(-1, -2) \
            .contiguous().transpose(-1, -2)
    ref, g = _grads(layer, x, Choice())
    assert layer.dispatch_choice == Choice()._asdict()
    for choice in MIXES[1:]:
        out, _ = _grads(layer, x, choice, g)
        assert layer.dispatch_choice == choice._asdict()
        for a, b in zip(out, ref):
            assert a.shape == b.shape
            assert_close(a, b, F64)
    assert layer.values.grad is None  # autograd.grad: nothing accumulated


GRADCHECK = {  # small: gradcheck's numerical Jacobian runs two forwards per input element
    "conv-csr-s2": (lambda: _conv("unstructured", cin=5, cout=6, density=0.5), (2, 5, 5, 4)),
    "conv-block-1x1": (lambda: _conv("block", cin=5, cout=20, k=1, stride=2, padding=0, density=0.5), (1, 5, 3, 3)),
    "linear-csr": (lambda: SparseLinear(13, 11, density=0.3, mode="csr", dtype=F64), (2, 2, 13)),
    "linear-block": (lambda: BlockSparseLinear(20, 18, density=0.5, block_size=16, dtype=F64), (3, 20)),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_mixed(seed, name):
    make, shape = GRADCHECK[name]
    layer = make()
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    leaves = (x, layer.values.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_())

    def call(x, values, bias):
        # the layer with gradcheck's leaves as its parameters: gradcheck perturbs values in place, and the dense
        # weight must follow through the version counter
        saved = layer.values, layer.bias
        layer._parameters["values"], layer._parameters["bias"] = values, bias
        try:
            return layer(x)
        finally:
            layer._parameters["values"], layer._parameters["bias"] = saved

    for choice in (Choice("dense", "sparse", "dense"), Choice("sparse", "dense", "sparse"), Choice(*["dense"] * 3)):
        layer.dispatch = choice._asdict()
        assert torch.autograd.gradcheck(call, leaves, eps=1e-6, atol=1e-7)


def test_dense_grad_hook_gets_dense_dw(seed):
    layer = SparseLinear(23, 31, density=0.3, dtype=F64)
    x = torch.randn(6, 23, dtype=F64)
    got = []
    layer.dense_grad_hook = got.append
    for choice in (Choice(), Choice("dense", "dense", "dense"), Choice("dense", "sparse", "sparse")):
        layer.dispatch = choice._asdict()
        got.clear()
        layer.values.grad = None
        y = layer(x)
        g = torch.randn_like(y)
        y.backward(g)
        assert len(got) == 1
        assert_close(got[0], g.T @ x, F64)
        assert_close(layer.values.grad, layer.layout.values_from_dense(g.T @ x), F64)


def test_dense_weight_is_incremental(seed):
    conv = _conv("unstructured", stride=1, density=0.3)
    conv.dispatch = "dense"
    x = torch.randn(2, 19, 6, 6, dtype=F64)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    conv(x).sum().backward()
    buf = conv.dispatcher.dense.buffer
    ptr = buf.data_ptr()
    for step in range(3):
        opt.step()
        opt.zero_grad()
        if step == 1:  # a topology change: old positions must be zeroed, new ones written
            mask = conv.dst_mask()
            on, off = mask.flatten().nonzero()[:5, 0], (~mask).flatten().nonzero()[:5, 0]
            new = mask.clone().flatten()
            new[on], new[off] = False, True
            conv.set_topology(new.view_as(mask))
        y = conv(x)
        assert conv.dispatcher.dense.buffer.data_ptr() == ptr  # the same buffer, never reallocated
        assert torch.equal(conv.dispatcher.dense.buffer.view_as(conv.dense_weight()), conv.dense_weight().detach())
        assert_close(y, torch.nn.functional.conv2d(x, conv.dense_weight(), conv.bias, 1, 1), F64)
        y.sum().backward()


def test_dense_weight_follows_load_state_dict_and_moves(seed):
    a, b = _conv("block", cout=36, stride=1, density=0.5), _conv("block", cout=36, stride=1, density=0.5)
    x = torch.randn(2, 19, 5, 5, dtype=F64)
    b.dispatch = "dense"
    b(x)
    b.load_state_dict(a.state_dict())  # another topology and values
    assert_close(b(x), a(x), F64)
    b.float()
    assert b(x.float()).dtype == torch.float32 and b.dispatcher.dense.buffer.dtype == torch.float32


def _net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 24), nn.ReLU(), nn.Linear(24, 5)).double()
    return sparsecl.sparsify(net, density=0.3, init="uniform")


def test_switching_mid_training_loses_nothing(seed):
    """Train twins through optimizer steps and DST updates, one always sparse, the other switching paths at every
    step (also across the DST update): same weights, topology and optimizer state; frozen weights bit-identical."""
    nets = [_net(seed), _net(seed)]
    for n in nets:
        n[0].values.requires_grad_(False)  # a frozen layer: its weights must never move
    frozen = nets[1][0].values.detach().clone()
    opts = [torch.optim.SGD([p for p in n.parameters() if p.requires_grad], lr=0.05, momentum=0.9) for n in nets]
    frozen_group = [{"pattern": "0", "drop_fraction": 0.0, "growth": "random"}]
    dsts = [DST(n, o, growth="gradient", update_every=2, decay="constant", drop_fraction=0.3, groups=frozen_group)
            for n, o in zip(nets, opts)]
    data = [(torch.randn(4, 3, 16, 16, dtype=F64), torch.randint(0, 5, (4,))) for _ in range(6)]
    modes = ["dense", "sparse", {"forward": "dense", "dx": "sparse", "dw": "dense"}, "sparse",
             {"forward": "sparse", "dx": "dense", "dw": "dense"}, "dense"]
    for step, ((x, y), mode) in enumerate(zip(data, modes)):
        for i, (net, opt, dst) in enumerate(zip(nets, opts, dsts)):
            for m in net.modules():
                if isinstance(m, dispatch.DispatchMixin):
                    m.dispatch = "sparse" if i == 0 else mode
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            dst.step()
    assert any(h["changed"] for h in dsts[1].history if any(h["changed"].values()))
    for (name, a), (_, b) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        assert_close(b, a, F64)
    for (_, a), (_, b) in zip(nets[0].named_buffers(), nets[1].named_buffers()):
        assert torch.equal(a, b)
    for pa, pb in zip(opts[0].param_groups[0]["params"], opts[1].param_groups[0]["params"]):
        assert_close(opts[1].state[pb]["momentum_buffer"], opts[0].state[pa]["momentum_buffer"], F64)
    assert torch.equal(nets[1][0].values, frozen) and nets[1][0].values.grad is None
    assert nets[0].state_dict().keys() == nets[1].state_dict().keys()


# the override API ---------------------------------------------------------------------------------------------------
def test_modes_and_precedence(monkeypatch):
    monkeypatch.delenv("SPARSECL_DISPATCH", raising=False)
    assert sparsecl.get_dispatch() == "sparse"  # the pytest default
    monkeypatch.setenv("SPARSECL_DISPATCH", "dense")
    assert sparsecl.get_dispatch("dx") == "dense"
    with sparsecl.use_dispatch("sparse"):
        assert sparsecl.get_dispatch() == "sparse"
        with sparsecl.use_dispatch("dense", direction="dw"):
            assert (sparsecl.get_dispatch("forward"), sparsecl.get_dispatch("dw")) == ("sparse", "dense")
        assert sparsecl.get_dispatch("dw") == "sparse"
    assert sparsecl.get_dispatch() == "dense"
    layer = SparseLinear(8, 8, density=0.5, mode="csr")
    layer.dispatch = {"dx": "sparse"}
    assert layer.dispatcher.modes() == {"forward": "dense", "dx": "sparse", "dw": "dense"}
    layer(torch.randn(2, 8))
    assert layer.dispatch_choice == {"forward": "dense", "dx": "sparse", "dw": "dense"}
    monkeypatch.setenv("SPARSECL_DISPATCH", "fast")
    with pytest.raises(ValueError, match="SPARSECL_DISPATCH"):
        sparsecl.get_dispatch()
    for bad in ("fastest", {"backward": "dense"}, {"dx": "fast"}):
        with pytest.raises(ValueError):
            layer.dispatch = bad
    with pytest.raises(TypeError):
        layer.dispatch = 3
    with pytest.raises(ValueError, match="mode"):
        sparsecl.set_dispatch("quick")
    with pytest.raises(ValueError, match="direction"):
        sparsecl.set_dispatch("dense", direction="backward")


def test_dense_or_sparse_needs_weight_and_checks_input():
    conv = _conv("unstructured")
    x = torch.randn(1, 19, 5, 5, dtype=F64)
    spec = csr_conv2d_spec(x, conv.layout, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    with pytest.raises(ValueError, match="dense_weight"):
        dense_or_sparse(x, conv.values, None, spec, Choice("dense", "sparse", "sparse"))
    with pytest.raises(ValueError, match="channels"):
        conv.dispatch = "dense"
        conv(torch.randn(1, 18, 5, 5, dtype=F64))


def test_report_and_masked_mode(seed):
    net = _net(seed)
    net.append(SparseLinear(5, 3, density=0.9, mode="masked", dtype=F64))
    assert all(v is None for v in sparsecl.dispatch_report(net).values())
    with sparsecl.use_dispatch("dense", direction="dx"):
        net(torch.randn(2, 3, 16, 16, dtype=F64))
    report = sparsecl.dispatch_report(net)
    assert set(report) == {"0", "2", "5", "7", "8"}
    assert report["2"]["choice"] == {"forward": "sparse", "dx": "dense", "dw": "sparse"}
    assert report["2"]["source"] == "forced" and 0 < report["2"]["density"] <= 1
    assert report["8"]["choice"] == {"forward": "dense", "dx": "dense", "dw": "dense"}
    json.dumps(report)


# calibration and its cache ------------------------------------------------------------------------------------------
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECL_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.clear_memory_cache()
    yield tmp_path / "cache"
    dispatch.clear_memory_cache()


def test_auto_calibrates_once_and_caches(seed, cache_dir, monkeypatch):
    conv = _conv("unstructured", cin=8, cout=8, stride=1)
    x = torch.randn(2, 8, 6, 6, dtype=F64)
    with sparsecl.use_dispatch("auto"):
        y = conv(x)
        rec = sparsecl.dispatch_report(conv)[""]
        assert rec["source"] == "calibrated" and set(rec["ms"]) == {"forward", "dx", "dw"}
        assert_close(y, torch.nn.functional.conv2d(x, conv.dense_weight(), conv.bias, 1, 1), F64)
        path = dispatch.cache_path()
        assert os.path.dirname(path) == str(cache_dir / "dispatch")
        entries = json.load(open(path))["entries"]
        assert list(entries) == [rec["key"]] and "|d0.3-0.4" in rec["key"]
        assert entries[rec["key"]]["forward"] == rec["choice"]["forward"]
        calls = []
        monkeypatch.setattr(dispatch, "calibrate", lambda *a: calls.append(a))
        twin = _conv("unstructured", cin=8, cout=8, stride=1)
        twin(torch.randn(2, 8, 6, 6, dtype=F64))  # same key: read from the cache
        dispatch.clear_memory_cache()
        twin(torch.randn(2, 8, 6, 6, dtype=F64))  # a fresh process: read from the file
        assert calls == [] and sparsecl.dispatch_report(twin)[""]["source"] == "cache"
    info = sparsecl.build_info()
    assert info["dispatch_cache"] == path and rec["key"] in info["dispatch_cache_entries"]


def _fake_calibration(choice):
    return lambda cands, device: dict(choice._asdict(), ms=None, date="test")


def test_cache_entry_decides_and_density_bucket_recalibrates(cache_dir, monkeypatch):
    monkeypatch.setattr(dispatch, "calibrate", _fake_calibration(Choice("dense", "sparse", "dense")))
    a = SparseLinear(16, 16, density=0.1, mode="csr", dtype=F64)
    x = torch.randn(3, 16, dtype=F64)
    with sparsecl.use_dispatch("auto"):
        a(x)
        assert a.dispatch_choice == {"forward": "dense", "dx": "sparse", "dw": "dense"}
        monkeypatch.setattr(dispatch, "calibrate", _fake_calibration(Choice()))
        a.load_state_dict(SparseLinear(16, 16, density=0.6, mode="csr", dtype=F64).state_dict())  # new bucket
        a(x)
        assert a.dispatch_choice == Choice()._asdict()
        assert len(json.load(open(dispatch.cache_path()))["entries"]) == 2
        with sparsecl.use_dispatch("sparse", direction="forward"):  # a forced direction beats the cache
            a(x)
            assert a.dispatch_choice == Choice()._asdict()


@pytest.mark.parametrize("garbage", ["{not json", '{"version": 1, "entries": {"k": {"forward": "fast"}}}', "[]",
                                     "\x00\xff"])
def test_corrupt_cache_warns_once_and_recalibrates(cache_dir, monkeypatch, garbage):
    path = dispatch.cache_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="latin-1") as f:
        f.write(garbage)
    monkeypatch.setattr(dispatch, "calibrate", _fake_calibration(Choice("dense", "dense", "dense")))
    layer = SparseLinear(12, 10, density=0.2, mode="csr", dtype=F64)
    with sparsecl.use_dispatch("auto"), pytest.warns(RuntimeWarning, match="unreadable") as record:
        layer(torch.randn(2, 12, dtype=F64))
        layer(torch.randn(2, 12, dtype=F64))
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert layer.dispatch_choice == {"forward": "dense", "dx": "dense", "dw": "dense"}
    assert len(json.load(open(path))["entries"]) == 1  # rewritten whole


def test_unwritable_cache_keeps_choices_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSECL_CACHE_DIR", str(blocker / "sub"))  # a directory under a file: cannot exist
    dispatch.clear_memory_cache()
    monkeypatch.setattr(dispatch, "calibrate", _fake_calibration(Choice("dense", "sparse", "sparse")))
    layer = SparseLinear(12, 10, density=0.2, mode="csr", dtype=F64)
    try:
        with sparsecl.use_dispatch("auto"), pytest.warns(RuntimeWarning, match="cannot be written"):
            y = layer(torch.randn(2, 12, dtype=F64))
            layer(torch.randn(2, 12, dtype=F64))
        assert y.shape == (2, 10) and layer.dispatch_choice["forward"] == "dense"
        assert sparsecl.build_info()["dispatch_cache"].endswith("(not written yet)")
    finally:
        dispatch.clear_memory_cache()


def test_cache_location_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARSECL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dispatch.cache_dir() == str(tmp_path / "sparsecl")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dispatch.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "sparsecl")
    m = dispatch.machine()
    assert m["threads"] == torch.get_num_threads() and m["isa"] and m["model"]
    torch.set_num_threads(max(1, torch.get_num_threads() - 1) if torch.get_num_threads() > 1 else 2)
    try:
        other = dispatch.cache_path()
    finally:
        torch.set_num_threads(m["threads"])
    assert other != dispatch.cache_path()  # keyed by thread count


def test_cache_is_keyed_by_the_kernel_build(monkeypatch):
    """Choices measured with other kernels (a rebuilt or upgraded extension) are not reused."""
    before = dispatch.cache_path()
    assert dispatch.machine()["kernels"] == dispatch.kernels_build()
    monkeypatch.setattr(dispatch, "kernels_build", lambda: "0123456789ab")
    assert dispatch.cache_path() != before
