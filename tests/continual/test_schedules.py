import pytest
import torch

from sparsecl.continual import ContinualTrainer
from sparsecl.continual import schedules
from sparsecl.continual.data import split_digits
from sparsecl.continual.run import masks_digest
from sparsecl.continual.schedules import LRSchedule

from ._cfg import MODES, tiny

PAPER = {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}


def _torch_lrs(make_scheduler, lr, n_steps, per_epoch=None):
    """Learning rate of each step under a torch scheduler, stepped once per epoch (per_epoch) or per step."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for step in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_epoch is None or (step + 1) % per_epoch == 0:
            sched.step()
    return lrs


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 7, 25, 100])
@pytest.mark.parametrize("steps_per_epoch", [1, 3])
def test_multistep_is_the_papers_multisteplr_stepped_per_epoch(epochs, steps_per_epoch):
    lr = 1e-3
    s = LRSchedule(PAPER, lr, steps_per_epoch, epochs)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(
        o, milestones=[int(epochs * 1 / 2), int(epochs * 3 / 4)], gamma=0.1), lr, s.steps, per_epoch=steps_per_epoch)
    got = [lr * s.factor(k) for k in range(s.steps)]
    assert got == pytest.approx(ref, rel=1e-12, abs=0)


def test_multistep_100_epochs_drops_at_epochs_50_and_75():
    s = LRSchedule(PAPER, 1e-3, 10, 100)
    factors = [s.factor(e * 10 + k) for e in range(100) for k in range(10)]
    assert factors[:500] == [1.0] * 500
    assert factors[500:750] == pytest.approx([0.1] * 250) and factors[750:] == pytest.approx([0.01] * 250)


@pytest.mark.parametrize("steps_per_epoch,epochs", [(1, 1), (7, 3), (50, 2)])
def test_cosine_is_cosineannealinglr_per_step(steps_per_epoch, epochs):
    lr = 0.05
    s = LRSchedule({"name": "cosine"}, lr, steps_per_epoch, epochs)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=s.steps), lr, s.steps)
    assert [lr * s.factor(k) for k in range(s.steps)] == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert s.factor(0) == 1.0 and s.factor(s.steps) == pytest.approx(0.0, abs=1e-15)


def test_constant_and_apply_set_every_group():
    s = LRSchedule({"name": "constant", "milestones": [0.5], "gamma": 0.1}, 0.05, 4, 3)
    assert {s.factor(k) for k in range(s.steps)} == {1.0}
    opt = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                            {"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 9.0}], lr=0.05)
    m = LRSchedule(PAPER, 0.05, 4, 4)
    assert m.apply(opt, 9) == pytest.approx(0.005)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.005)] * 2


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="lr_schedule.name must be one of"):
        LRSchedule({"name": "step"}, 0.1, 1, 1)
    with pytest.raises(ValueError, match="steps_per_epoch and epochs"):
        LRSchedule(PAPER, 0.1, 0, 1)


def _spy(monkeypatch):
    seen = []
    apply = LRSchedule.apply

    def record(self, optimizer, step):
        lr = apply(self, optimizer, step)
        seen.append((step, lr, [g["lr"] for g in optimizer.param_groups]))
        return lr

    monkeypatch.setattr(schedules.LRSchedule, "apply", record)
    return seen


def test_trainer_restarts_the_schedule_at_every_task(tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    cfg = tiny(tmp_path, mode="dense-masked", epochs=4, lr_schedule=PAPER,
               optimizer={"name": "adam", "lr": 0.01, "weight_decay": 0.0})
    tr = ContinualTrainer(cfg, split_digits())
    tr.run()
    start = 0
    for t in range(5):
        spe = tr._steps_per_epoch(t)
        steps, start = seen[start:start + 4 * spe], start + 4 * spe
        assert [s for s, _, _ in steps] == list(range(4 * spe))
        want = [0.01] * (2 * spe) + [0.001] * spe + [0.0001] * spe  # milestones: epochs 2 and 3 of 4
        assert [lr for _, lr, _ in steps] == pytest.approx(want)
        assert all(groups == [lr] * len(groups) for _, lr, groups in steps)
    assert start == len(seen)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["multistep", "cosine"])
def test_resume_mid_schedule_matches_uninterrupted_run(tmp_path, mode, name):
    sched = {**PAPER, "name": name}
    opt = {"name": "adam", "lr": 0.01, "weight_decay": 0.0}

    def run(cfg):
        tr = ContinualTrainer(cfg, split_digits())
        return tr.run(), masks_digest(tr)

    full, full_digest = run(tiny(tmp_path / "full", mode=mode, epochs=4, lr_schedule=sched, optimizer=opt))
    _, constant_digest = run(tiny(tmp_path / "const", mode=mode, epochs=4, optimizer=opt))
    assert constant_digest != full_digest  # the schedule reaches the optimizer
    steps = [r["steps"] for r in full["tasks"]]
    cfg = tiny(tmp_path / "cut", mode=mode, epochs=4, lr_schedule=sched, optimizer=opt, checkpoint_every=5)
    with pytest.raises(SystemExit):  # killed in task 4, past its second milestone (epoch 3 of 4)
        run({**cfg, "stop_after_steps": sum(steps[:3]) + steps[3] * 7 // 8})
    resumed, digest = run({**cfg, "resume": True})
    assert resumed["acc_matrix"] == full["acc_matrix"] and digest == full_digest
