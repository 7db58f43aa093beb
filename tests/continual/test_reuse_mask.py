"""reuse: mask (the reference paper's per-task subnetwork): protocol invariants over random runs.

Checked at task start and after every DST update, in both modes and under SGD+wd, momentum, Adam and AdamW:
the task mask holds exactly round(d_l * numel) positions per layer; every earlier task's value is
bit-identical (in the task mask or not); a reused or re-added frozen connection is read with its frozen
value and is never trainable (sparse mode: it is not in the trainable part, so it has no gradient and no
optimizer state). After the run: task j's predictions depend on mask j alone.
"""
import pytest
import torch

from sparsecl.continual import ContinualTrainer
from sparsecl.continual.data import split_digits
from sparsecl.continual.run import check_config
from sparsecl.continual.trainer import DEFAULTS, _mask_keys, merge_config
from sparsecl.dst import layer_densities
from sparsecl.errors import ConfigError

from ._cfg import MODES, tiny
from .test_trainer import OPTIMIZERS

TASKS = split_digits()


class Checked(ContinualTrainer):
    """Checks the protocol at each task start and after every DST update."""

    def train_task(self, t, *a, **k):
        self.frozen = [(~self.own.free(i)).clone() for i in range(len(self.layers))]
        self.frozen_bits = [l.stored_weight().detach()[f].clone() for l, f in zip(self.layers, self.frozen)]
        shapes = [tuple(l.dst_mask().shape) for l in self.layers]
        dens = layer_densities(shapes, self.cfg["density"], init=self.cfg["init"])
        self.expected = [int(round(d * s[0] * s[1])) for d, s in zip(dens, shapes)]
        self.prev = None
        self.readded = getattr(self, "readded", 0)
        self.checks = getattr(self, "checks", 0)
        rec = super().train_task(t, *a, **k)
        self.final = getattr(self, "final", []) + [[_mask_keys(l.dst_mask()) for l in self.layers]]
        return rec

    def _make_dst(self, optimizer, growth, total_steps):
        dst = super()._make_dst(optimizer, growth, total_steps)
        update = dst._update

        def checked_update():
            out = update()
            self.check(optimizer)
            return out
        dst._update = checked_update
        self.check(optimizer)
        return dst

    def check(self, optimizer):
        masks = []
        for i, l in enumerate(self.layers):
            mask, frozen = l.dst_mask(), self.frozen[i]
            assert int(mask.sum()) == self.expected[i], f"layer {i}: task mask nnz {int(mask.sum())}"
            now = l.stored_weight().detach()[frozen]
            assert torch.equal(now.view(torch.int32), self.frozen_bits[i].view(torch.int32)), f"layer {i}: frozen bits"
            reused = mask & frozen  # read with the frozen value
            assert torch.equal(l.dense_weight().detach()[reused].view(torch.int32),
                               l.stored_weight().detach()[reused].view(torch.int32))
            if hasattr(l, "inner"):  # sparse: trainable part = free positions only, state sized to it
                assert not bool((l.inner.dst_mask() & frozen).any()), f"layer {i}: a frozen position is trainable"
                p = l.sparse_parameter
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.dim():
                        assert v.numel() == p.numel() == int((mask & ~frozen).sum())
            if self.prev is not None:
                self.readded += int((reused & ~self.prev[i]).sum())
            masks.append(reused.clone())
        self.prev = masks
        self.checks += 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_protocol_invariants_every_update(tmp_path, mode, optimizer):
    seed = sum(map(ord, mode + optimizer)) % 97
    cfg = tiny(tmp_path, mode=mode, optimizer=OPTIMIZERS[optimizer], growth="gradient", seed=seed, epochs=3,
               drop_fraction=0.5, update_every=2, model={"width": 48})
    tr = Checked(cfg, TASKS)
    res = tr.run()
    assert tr.checks > 5 * 10
    assert tr.readded > 0, "no frozen connection was re-added: the re-add invariant went unchecked"
    for rec in res["tasks"]:
        assert abs(rec["subnetwork_density"] - 0.2) < 0.002
        assert 0.0 <= rec["reused_fraction"] <= 1.0
    assert res["tasks"][0]["reused_fraction"] == 0.0 and res["tasks"][-1]["reused_fraction"] > 0.3
    # each task's final mask comes back exactly from its compact form: one bit per position owned by tasks 0..j
    for j, (stored, final) in enumerate(zip(tr.task_mask_keys(), tr.final)):
        assert all(torch.equal(a, b) for a, b in zip(stored, final)), f"task {j}'s mask did not round-trip"
    assert all(b.dtype == torch.uint8 and b.dim() == 1 for masks in tr.task_masks for b in masks)
    owned = [int((o != 0).sum()) for o in tr.own.owner]  # after the last task: the most any mask's bits cover
    assert res["mask_bytes"] == sum(b.numel() for masks in tr.task_masks for b in masks)
    assert res["mask_bytes"] <= sum(len(tr.task_masks) * ((n + 7) // 8) for n in owned)
    n_positions = sum(k.numel() for masks in tr.final for k in masks)
    assert res["mask_bytes"] < n_positions  # under one byte per mask position (int32 positions: 4)


def _logits(tr, j, x):
    tr._select_task_mask(j)
    tr.model.eval()
    with torch.no_grad():
        return tr.model(TASKS[j].prepare(x), j)


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_of_task_j_reads_only_mask_j(tmp_path, mode):
    tr = ContinualTrainer(tiny(tmp_path, mode=mode, growth="random", seed=3), TASKS)
    tr.run()
    j = 1
    x = TASKS[j].x_test[:64]
    before = _logits(tr, j, x)
    for i, l in enumerate(tr.layers):
        inside = torch.zeros(l.dst_mask().numel(), dtype=torch.bool)
        inside[tr.task_mask_keys()[j][i].long()] = True
        outside = ~inside
        if hasattr(l, "frozen_values"):  # every stored weight is frozen after the run
            keys = l.frozen_layout.keys()
            with torch.no_grad():
                l.frozen_values[outside[keys]] += 1.0
        else:
            with torch.no_grad():
                l.weight.view(-1)[outside] += 1.0
    assert torch.equal(_logits(tr, j, x), before), "a weight outside mask j moved task j's predictions"
    l = tr.layers[0]  # the test can fail: a weight inside mask j does move them
    with torch.no_grad():
        if hasattr(l, "frozen_values"):
            l.frozen_values.add_(1.0)
        else:
            l.weight.add_(1.0)
    assert not torch.equal(_logits(tr, j, x), before)


def test_reuse_all_keeps_todays_protocol(tmp_path):
    res = ContinualTrainer(tiny(tmp_path, mode="dense-masked", reuse="all"), TASKS).run()
    dens = [r["subnetwork_density"] for r in res["tasks"]]
    assert dens[0] == pytest.approx(0.2, abs=0.002) and dens[1] == pytest.approx(0.4, abs=0.002)
    assert res["mask_bytes"] == 0


@pytest.mark.parametrize("value", ["mask", "all"])
def test_config_accepts_reuse(value):
    check_config(merge_config(DEFAULTS, {"reuse": value}))


@pytest.mark.parametrize("value", ["some", "", "MASK", 1])
def test_config_rejects_other_reuse_values_with_one_line(value):
    with pytest.raises(ConfigError) as e:
        check_config(merge_config(DEFAULTS, {"reuse": value}))
    msg = str(e.value)
    assert "reuse" in msg and "\n" not in msg


@pytest.mark.parametrize("mode", MODES)
def test_task_masks_survive_the_checkpoint(tmp_path, mode):
    """The checkpoint holds each task's mask as int32 positions; loading re-encodes them to the same bits (and
    packed bits written there would load as they are)."""
    cfg = tiny(tmp_path, mode=mode, epochs=1, seed=5)
    tr = ContinualTrainer(cfg, TASKS)
    tr.run()
    again = ContinualTrainer(cfg, TASKS)
    again.load()
    assert len(again.task_masks) == 5
    for a, b in zip(again.task_masks, tr.task_masks):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for a, b in zip(again.task_mask_keys(), tr.task_mask_keys()) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(again.own.owner, tr.own.owner))
