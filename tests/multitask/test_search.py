import time

import numpy as np
import pytest
import torch

import sparsecl.nn
from sparsecl.multitask.data import TaskSpec
from sparsecl.multitask.search import MacTable, WidthSearch, analytic_macs, hook_macs

from ._helpers import needs_slim, one_thread  # noqa: F401

pytestmark = needs_slim

TASKS = {"seg": TaskSpec("seg", "seg", 6), "depth": TaskSpec("depth", "depth", 1), "edge": TaskSpec("edge", "edge", 1)}


def _model(tasks=TASKS, widths=(0.25, 0.5, 0.75, 1.0), enc=(8, 16, 24), dec=12):
    from sparsecl.multitask.model import MultiTaskNet

    return MultiTaskNet(tasks, enc_channels=enc, dec_channels=dec, widths=widths)


@pytest.mark.parametrize("hw", [(16, 16), (13, 18)])
def test_mac_counter_matches_hooks(hw):
    """Every configuration at 16x16 (a strided sample at an odd size): analytic == table == hooks."""
    # the odd size also uses channel counts where w * c lands on .5 (rounding rule must agree)
    m = _model() if hw == (16, 16) else _model(enc=(10, 6, 14), dec=10)
    table = MacTable(m, hw)
    step = 1 if hw == (16, 16) else 7
    for cfg in m.all_configs()[::step]:
        a = analytic_macs(m, cfg, hw)
        assert a == table.macs(cfg) == hook_macs(m, cfg, hw), cfg.key()
    for cfg in m.all_configs()[::31]:  # and sparsecl.nn's own counter agrees
        with m.using(cfg):
            assert sparsecl.nn.count_macs(m, torch.zeros(1, 3, *hw)) == table.macs(cfg), cfg.key()
    assert table.min_macs == table.macs(m.config(0.25)) and table.max_macs == table.macs(m.full_config())


def test_mac_counter_classification_model_and_odd_grid():
    tasks = {f"c{k}": TaskSpec(f"c{k}", "cls", 5) for k in range(3)}
    m = _model(tasks, widths=(0.3, 0.6, 1.0), enc=(10, 14, 20), dec=7)
    table = MacTable(m, (12, 12))
    for cfg in m.all_configs()[::5]:
        assert analytic_macs(m, cfg, (12, 12)) == table.macs(cfg) == hook_macs(m, cfg, (12, 12))


def _perf(m, rng):
    # relative performance that grows with both widths, task-dependent sensitivity
    return {t: {(e, d): 0.5 + 0.3 * e * rng.uniform(0.5, 1) + 0.2 * d * rng.uniform(0.5, 1)
                for e in m.widths for d in m.widths} for t in m.tasks}


@pytest.mark.parametrize("with_perf,exhaustive", [(False, False), (True, False), (True, True)])
def test_search_never_exceeds_budget_and_is_fast(seed, with_perf, exhaustive, monkeypatch):
    import sparsecl.multitask.search as search_mod

    monkeypatch.setattr(search_mod, "EXHAUSTIVE_LIMIT", 10 ** 6 if exhaustive else 0)
    m = _model()
    rng = np.random.default_rng(seed)
    s = WidthSearch(m, (32, 32), perf=_perf(m, rng) if with_perf else None)
    assert (s._all is not None) == exhaustive
    lo, hi = s.table.min_macs, s.table.max_macs
    times = []
    for _ in range(1000):
        B = float(rng.uniform(lo, 1.1 * hi))
        p = rng.dirichlet(np.ones(3))
        t0 = time.perf_counter()
        cfg, macs = s(B, p)
        times.append(time.perf_counter() - t0)
        assert macs == s.table.macs(cfg) <= B
        w = cfg.dec
        for i, a in enumerate(m.tasks):  # a more-preferred task never gets a narrower decoder
            for j, b in enumerate(m.tasks):
                if p[i] > p[j]:
                    assert w[a] >= w[b], (p, cfg.key())
    assert np.median(times) < 5e-3, f"median search time {np.median(times) * 1e3:.2f} ms"


def test_exhaustive_search_is_the_best_ordered_configuration_within_budget(seed):
    m = _model()
    rng = np.random.default_rng(seed)
    s = WidthSearch(m, (32, 32), perf=_perf(m, rng))
    perf = s.perf  # the rescaled table the objective uses
    T = list(m.tasks)
    for _ in range(30):
        B = float(rng.uniform(s.table.min_macs, s.table.max_macs))
        p = rng.dirichlet(np.ones(3))
        cfg, macs = s(B, p)
        best = -np.inf
        for c in m.all_configs():  # reference: brute force over Config objects
            d = c.dec
            if s.table.macs(c) <= B and all(d[T[i]] >= d[T[j]] for i in range(3) for j in range(3) if p[i] > p[j]):
                best = max(best, sum(p[i] * perf[t][(c.encoder, d[t])] for i, t in enumerate(T)))
        got = sum(p[i] * perf[t][(cfg.encoder, cfg.dec[t])] for i, t in enumerate(T))
        assert got == pytest.approx(best, abs=1e-12) and macs == s.table.macs(cfg) <= B


def test_objective_table_is_rescaled_per_task(seed):
    m = _model()
    raw = _perf(m, np.random.default_rng(seed))
    s = WidthSearch(m, (32, 32), perf=raw)
    for t in m.tasks:
        v = np.array([s.perf[t][k] for k in raw[t]])
        r = np.array([raw[t][k] for k in raw[t]])
        assert v.min() == 0.0 and v.max() == 1.0
        np.testing.assert_allclose(v, (r - r.min()) / (r.max() - r.min()))
    assert WidthSearch(m, (32, 32), perf=raw, normalise=False).perf == raw


def test_search_edges():
    m = _model()
    s = WidthSearch(m, (32, 32))
    t = s.table
    cfg, macs = s(t.min_macs, [0.2, 0.5, 0.3])
    assert cfg == m.config(0.25) and macs == t.min_macs  # falls back to the smallest configuration
    with pytest.raises(ValueError, match="below the smallest configuration"):
        s(t.min_macs - 1, [1, 1, 1])
    cfg, _ = s(t.max_macs, [1, 1, 1])
    assert cfg == m.full_config()
    with pytest.raises(ValueError, match="preferences"):
        s(t.max_macs, [1, 1])
    with pytest.raises(ValueError, match="preferences"):
        s(t.max_macs, [1, -1, 1])
    cfg_d, _ = s(t.max_macs, {"seg": 1, "depth": 1, "edge": 1})
    assert cfg_d == m.full_config()


def test_preference_moves_decoder_budget():
    m = _model()
    s = WidthSearch(m, (32, 32))
    B = s.table.min_macs + 0.4 * (s.table.max_macs - s.table.min_macs)
    a, _ = s(B, [0.8, 0.1, 0.1])
    b, _ = s(B, [0.1, 0.1, 0.8])
    assert a.dec["seg"] > a.dec["edge"]
    assert b.dec["edge"] >= b.dec["seg"] and b.dec["edge"] > a.dec["edge"]


def test_uniform_baseline_equal_decoders(seed):
    m = _model()
    rng = np.random.default_rng(seed)
    s = WidthSearch(m, (32, 32), perf=_perf(m, rng))
    for _ in range(200):
        B = float(rng.uniform(s.table.min_macs, s.table.max_macs))
        cfg, macs = s(B, rng.dirichlet(np.ones(3)), uniform=True)
        assert len(set(cfg.dec.values())) == 1 and macs <= B


def test_perf_table_must_be_complete():
    m = _model()
    with pytest.raises(ValueError, match="lacks"):
        WidthSearch(m, (32, 32), perf={"seg": {}})


def test_latency_measured_per_config():
    from sparsecl.multitask.search import measure_latency

    m = _model()
    lat = measure_latency(m, [m.config(0.25), m.full_config()], (16, 16), reps=2, warmup=1)
    assert set(lat) == {m.config(0.25).key(), m.full_config().key()} and all(v > 0 for v in lat.values())
