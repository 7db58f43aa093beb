import itertools
import math

import numpy as np
import pytest
import torch

from sparsecl.multitask import metrics as M

from ._helpers import one_thread  # noqa: F401


def test_miou_hand():
    # 3 classes; prediction = argmax of one-hot logits
    target = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 2]]])
    pred_lab = torch.tensor([[[0, 1, 1, 0], [1, 2, 0, 2]]])
    logits = torch.nn.functional.one_hot(pred_lab, 3).permute(0, 3, 1, 2).float()
    m = M.TaskMeter("seg", 3)
    m.update(logits, target)
    # class0: tp1 fp1 (pixel (1,2)) fn1 -> 1/3; class1: tp2 fp1 fn0 -> 2/3; class2: tp2 fp0 fn1 -> 2/3
    assert m.value() == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)


def test_depth_rmse_normals_angle_accuracy_hand():
    m = M.TaskMeter("depth", 1)
    m.update(torch.tensor([[[[1.0, 2.0, 5.0]]]]), torch.tensor([[[[2.0, 2.0, 0.0]]]]))  # last pixel invalid
    m.update(torch.tensor([[[[3.0]]]]), torch.tensor([[[[1.0]]]]))
    assert m.value() == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    n = M.TaskMeter("normals", 3)
    pred = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 1.0]]).T.reshape(1, 3, 1, 3)
    tgt = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 0]]).T.reshape(1, 3, 1, 3)
    n.update(pred, tgt)
    assert n.value() == pytest.approx((0 + 45) / 2)
    a = M.TaskMeter("cls", 5)
    a.update(torch.eye(5)[[0, 1, 2, 3]], torch.tensor([0, 2, -100, 3]))
    assert a.value() == pytest.approx(2 / 3)


def test_edge_f_hand():
    m = M.TaskMeter("edge", 1)
    prob = torch.tensor([0.95, 0.55, 0.35, 0.05])
    logits = torch.log(prob / (1 - prob)).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 1.0, 0.0, 1.0]).view(1, 1, 1, 4)
    m.update(logits, target)
    # t<=0.3: tp2 fp1 fn1 -> 2/3; 0.4-0.5: tp2 fp0 fn1 -> 0.8; 0.6-0.9: tp1 fn2 -> 0.5
    assert m.value() == pytest.approx(0.8)


def test_loss_with_no_valid_targets_is_zero_with_grad():
    pred = torch.randn(3, 5, requires_grad=True)
    loss = M.task_loss("cls", pred, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None


def test_relative():
    assert M.relative(0.6, 0.5, True) == pytest.approx(1.2)
    assert M.relative(0.6, 0.5, False) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        M.relative(1.0, 0.0, True)


def test_dymu_hand():
    assert M.dymu([0.5, 0.5], [2.0, 2.0]) == pytest.approx(1.0)
    assert M.dymu([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 - math.log(2))
    q = np.array([0.2 * 1.0, 0.8 * 2.0])
    q = q / q.sum()
    assert M.dymu([0.2, 0.8], [1.0, 2.0]) == pytest.approx(1 - float(np.sum(q * np.log(q * 2))))
    with pytest.raises(ValueError):
        M.dymu([0.5, -0.5], [1, 1])


def _hv_inclusion_exclusion(P, r):
    total = 0.0
    for k in range(1, len(P) + 1):
        for S in itertools.combinations(range(len(P)), k):
            box = np.prod(np.clip(np.min(P[list(S)], axis=0) - r, 0, None))
            total += (-1) ** (k + 1) * box
    return total


def test_hypervolume_hand_2d():
    P = [[1, 3], [2, 2], [3, 1]]
    assert M.hypervolume(P, [0, 0]) == pytest.approx(6.0)
    assert M.hypervolume(P + [[1, 1]], [0, 0]) == pytest.approx(6.0)  # dominated point adds nothing
    assert M.hypervolume([[2, 2]], [1, 3]) == 0.0  # not above the reference
    assert M.hypervolume(np.zeros((0, 2)), [0, 0]) == 0.0


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(seed, d):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        P = rng.uniform(0, 1, (int(rng.integers(1, 8)), d))
        r = rng.uniform(-0.2, 0.3, d)
        assert M.hypervolume(P, r) == pytest.approx(_hv_inclusion_exclusion(P, r), abs=1e-12)


def test_spearman():
    from scipy.stats import spearmanr

    assert M.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert M.spearman([1, 1, 1], [1, 2, 3]) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 12), rng.normal(size=12)
    assert M.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
