import pytest

from sparsecl.continual import metrics as M


def test_metrics_on_a_hand_matrix():
    acc = [[0.9, 0.1, 0.2],
           [0.8, 0.95, 0.3],
           [0.7, 0.9, 1.0]]
    base = [0.5, 0.15, 0.25]
    assert M.average_accuracy(acc) == pytest.approx((0.7 + 0.9 + 1.0) / 3)
    assert M.backward_transfer(acc) == pytest.approx(((0.7 - 0.9) + (0.9 - 0.95)) / 2)
    assert M.forward_transfer(acc, base) == pytest.approx(((0.1 - 0.15) + (0.3 - 0.25)) / 2)
    assert M.forgetting(acc) == pytest.approx(((0.9 - 0.7) + (0.95 - 0.9)) / 2)
    # an accuracy seen before task j was trained (acc[0][1] here) does not count as forgetting
    assert M.forgetting([[0.9, 0.99, 0.1], [0.9, 0.8, 0.1], [0.9, 0.8, 0.9]]) == 0.0
    s = M.summary(acc, base)
    assert set(s) == {"ACC", "BWT", "FWT", "forgetting"}


def test_single_task_and_bad_shapes():
    assert M.backward_transfer([[0.5]]) == 0.0 and M.forgetting([[0.5]]) == 0.0
    with pytest.raises(ValueError, match="square"):
        M.average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="baseline"):
        M.forward_transfer([[1.0, 0.0], [1.0, 1.0]], [0.5])


def test_state_bytes_counts_params_grads_buffers_and_optimizer_state_once():
    import torch

    lin = torch.nn.Linear(10, 4)
    lin.register_buffer("m", torch.zeros(4, 10, dtype=torch.bool))
    lin.register_buffer("w_view", lin.weight.detach()[:2])  # shares the weight's storage: counted once
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.randn(2, 10)).sum().backward()
    opt.step()
    masks = [[torch.zeros(3, dtype=torch.uint8)]]
    b = M.trunk_state_bytes([lin], opt, task_masks=masks)
    assert b == {"weights": 44 * 4, "optimizer": 2 * 44 * 4, "gradients": 44 * 4, "owner": 0, "index": 40,
                 "masks": 3, "derived": 0, "guard": 0, "dst": 0, "total": 4 * 44 * 4 + 43}
    assert M.peak_rss_bytes() > 0
