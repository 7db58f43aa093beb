import random

import pytest
import torch

from sparsecl.multitask.data import synthetic_scenes
from sparsecl.multitask.model import Config, MultiTaskNet, channels
from sparsecl.multitask.train import kd_loss, sample_configs, train_step

from ._helpers import needs_slim, one_thread  # noqa: F401


def test_kd_loss_compares_first_channels():
    teacher = torch.randn(2, 8, 3, 3)
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = kd_loss(student, teacher)
    energy = (teacher[:, :4] ** 2).mean().item() + 1e-6
    assert loss.item() == pytest.approx(((student.detach() - teacher[:, :4]) ** 2).mean().item() / energy)
    loss.backward()
    assert torch.allclose(student.grad, 2 * (student.detach() - teacher[:, :4]) / student.numel() / energy)
    assert kd_loss(3 * student, 3 * teacher).item() == pytest.approx(loss.item(), rel=1e-5)  # scale-free
    t = teacher.clone().requires_grad_(True)
    kd_loss(student, t).backward()
    assert t.grad is None  # the teacher is detached
    with pytest.raises(ValueError):
        kd_loss(torch.randn(2, 9, 3, 3), teacher)


def test_channels_rule():
    assert channels(48, 0.25) == 12 and channels(10, 0.3) == 3 and channels(3, 0.1) == 1


@needs_slim
def test_config_validation_and_sandwich():
    data = synthetic_scenes(4, size=16)
    m = MultiTaskNet(data.tasks, (8, 16, 24), 12)
    with pytest.raises(ValueError, match="grid"):
        m.config(0.3)
    with pytest.raises(ValueError, match="tasks"):
        m.config(0.5, {"seg": 0.5})
    with pytest.raises(ValueError):
        MultiTaskNet(data.tasks, widths=(0.5, 0.75))
    cfgs = sample_configs(m, 3, random.Random(0))
    assert cfgs[0] == m.full_config() and cfgs[1] == m.config(0.25) and len(cfgs) == 5
    assert isinstance(cfgs[2], Config) and len(m.all_configs()) == 4 ** 4


@needs_slim
def test_subnet_forward_shapes():
    data = synthetic_scenes(3, size=16)
    m = MultiTaskNet(data.tasks, (8, 16, 24), 12)
    cfg = m.config(0.5, {"seg": 0.25, "depth": 1.0, "edge": 0.75})
    with m.using(cfg):
        f, out = m(data.images)
    assert f.shape == (3, channels(24, 0.5), 4, 4)
    assert out["seg"].shape == (3, 6, 16, 16) and out["depth"].shape == (3, 1, 16, 16)


@needs_slim
@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_train_step_kd_only_touches_subnet_path(kd_weight):
    torch.manual_seed(0)
    data = synthetic_scenes(4, size=16)
    m = MultiTaskNet(data.tasks, (8, 16, 24), 12)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    images, targets = data.batch(torch.arange(4))
    w = {t: 1.0 for t in m.tasks}
    small = m.config(0.25)
    stats = train_step(m, opt, images, targets, [m.full_config(), small], kd_weight, w)
    assert (stats["kd"] > 0) == bool(kd_weight) and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    g_with = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    # reference: the same gradients from explicit losses; KD adds grad only to the SubNet path
    opt.zero_grad()
    from sparsecl.multitask.train import _task_losses

    with m.using(m.full_config()):
        f_t, o = m(images)
        _task_losses(m, o, targets, w).backward()
    with m.using(small):
        f_s, o = m(images)
        (_task_losses(m, o, targets, w) + kd_weight * kd_loss(f_s, f_t.detach())).backward()
    for n, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g_with[n], p.grad, rtol=1e-4, atol=1e-6)
    if kd_weight:
        stem = m.encoder.stem.weight.grad
        assert stem[channels(8, 0.25):].abs().sum() > 0  # full-width rows only from the SuperNet loss


@needs_slim
def test_decoder_bn_is_switched_per_encoder_and_decoder_width():
    data = synthetic_scenes(3, size=16)
    m = MultiTaskNet(data.tasks, (8, 16, 24), 12).train()
    with m.using(m.config(0.25, {"seg": 0.5, "depth": 1.0, "edge": 0.25})):
        m(data.images)
    dec = m.decoders["seg"]
    tracked = [[int(bn.num_batches_tracked) for bn in sw.bn] for sw in dec.bn1]
    assert tracked == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert [[int(bn.num_batches_tracked) for bn in sw.bn] for sw in dec.bn2] == tracked
    with pytest.raises(ValueError, match="encoder features"):
        dec(torch.randn(1, 5, 4, 4), (16, 16))
