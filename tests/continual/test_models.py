import pytest
import torch

from sparsecl.continual import ContinualTrainer
from sparsecl.continual.data import Task
from sparsecl.continual.models import build_model
from sparsecl.continual.trunk import DenseMaskedLinear, MaskedConv2d

from ._cfg import tiny


def _image_tasks(n_tasks=2, n=24, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        y = torch.arange(n) % 2
        x[y == 1, 0] = (x[y == 1, 0] // 2 + 128).to(torch.uint8)  # learnable: class 1 has a bright red plane
        f = x.float() / 255
        tasks.append(Task(f"img/{t}", [2 * t, 2 * t + 1], x, y, x[:8].clone(), y[:8].clone(),
                          f.mean((0, 2, 3)), f.std((0, 2, 3))))
    return tasks


@pytest.mark.parametrize("name,width", [("cnn", 4), ("resnet18", 4), ("mobilenetv2", 0.25)])
def test_cnn_models_forward_and_protocol(name, width):
    tasks = _image_tasks()
    m = build_model(name, tasks, mode="dense-masked", width=width)
    for l in m.sparse_layers:
        assert isinstance(l, MaskedConv2d)
        assert l.dst_mask().dtype == torch.bool and l.dst_mask().shape == l.dense_weight().shape
        l.set_weight_and_mask(torch.randn(l.dst_mask().shape), torch.rand(l.dst_mask().shape) < 0.5)
    x = tasks[0].prepare(tasks[0].x_train[:4])
    m.eval()
    y = m(x, 1)
    assert y.shape == (4, 2)
    # the functional (evaluation-view) path computes the same as the module path
    assert torch.allclose(m(x, 1, [l.dense_weight() for l in m.sparse_layers]), y, atol=1e-5)


def test_per_task_batchnorm_makes_eval_independent_of_the_batch():
    tasks = _image_tasks()
    m = build_model("cnn", tasks, mode="dense-masked", width=4)
    for l in m.sparse_layers:
        l.set_weight_and_mask(torch.randn(l.dst_mask().shape), torch.ones(l.dst_mask().shape, dtype=torch.bool))
    m.train()
    m(tasks[0].prepare(tasks[0].x_train), 0)  # moves task 0's running stats only
    assert all(int(n.bns[1].num_batches_tracked) == 0 for n in m.norms)
    m.eval()
    x = tasks[0].prepare(tasks[0].x_test)
    alone = torch.cat([m(x[i:i + 1], 0) for i in range(len(x))])
    assert torch.allclose(m(x, 0), alone, atol=1e-5)


def test_dense_masked_layer_protocol():
    l = DenseMaskedLinear(5, 3)
    mask = torch.rand(3, 5) < 0.5
    w = torch.randn(3, 5)
    l.set_weight_and_mask(w, mask)
    assert torch.equal(l.dense_weight(), w * mask)
    new = mask.clone()
    new[0, 0] = ~new[0, 0]
    src = l.set_topology(new)
    assert src[0] == -1 and bool((src[1:] == torch.arange(1, 15)).all())
    assert l.dense_weight()[0, 0] == 0
    x = torch.randn(4, 5)
    expect = w * new
    expect[0, 0] = 0  # a changed position restarts at zero
    assert torch.allclose(l(x), x @ expect.T)


def test_unknown_model_and_input_mismatch():
    tasks = _image_tasks()
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit", tasks)
    from sparsecl.continual.data import split_digits

    with pytest.raises(ValueError, match="image inputs"):
        build_model("resnet18", split_digits())


@pytest.mark.parametrize("mode,name,width", [("dense-masked", "cnn", 4), ("sparse", "cnn", 4), ("sparse", "resnet18", 2),
                                             ("sparse", "mobilenetv2", 0.25)])
def test_cnn_continual_run_keeps_frozen_weights_and_bwt_zero(tmp_path, mode, name, width):
    from .test_trainer import Recording, _check_frozen_bits

    cfg = tiny(tmp_path, mode=mode, model={"name": name, "width": width}, batch_size=8, epochs=2, reuse="all",
               optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.05})
    tr = Recording(cfg, _image_tasks(3))
    res = tr.run()
    assert _check_frozen_bits(tr) > 0
    assert res["BWT"] == 0.0


def _copy_trunk(src_model, dst_model, p_owned, gen):
    """Give dst_model's trunk src_model's effective weights; dst's positions with owned=True become frozen."""
    for a, b in zip(src_model.sparse_layers, dst_model.sparse_layers):
        w, m = a.dense_weight().detach(), a.dst_mask()
        if isinstance(b, MaskedConv2d):
            b.set_weight_and_mask(w, m)
        else:
            b.load_split(w, m, m & (torch.rand(m.shape, generator=gen) < p_owned))
    dst_model.load_state_dict({k: v for k, v in src_model.state_dict().items() if not k.startswith("sparse_layers.")},
                              strict=False)


@pytest.mark.parametrize("name,width", [("cnn", 4), ("resnet18", 4), ("mobilenetv2", 0.25)])
def test_sparse_cnn_matches_dense_masked_with_the_same_weights(seed, name, width):
    from sparsecl.continual.trunk import SparseTrunkConv2d

    tasks = _image_tasks()
    gen = torch.Generator().manual_seed(seed)
    dense = build_model(name, tasks, mode="dense-masked", width=width).double()
    for l in dense.sparse_layers:
        l.set_weight_and_mask(torch.randn(l.dst_mask().shape, generator=gen, dtype=torch.float64),
                              torch.rand(l.dst_mask().shape, generator=gen) < 0.4)
    sparse = build_model(name, tasks, mode="sparse", width=width).double()
    n_sparse = sum(isinstance(l, SparseTrunkConv2d) for l in sparse.sparse_layers)
    assert n_sparse >= (3 if name == "cnn" else 10)  # every groups=1 conv runs on the sparse conv kernel
    assert all(isinstance(l, SparseTrunkConv2d) or l.groups > 1 for l in sparse.sparse_layers)
    _copy_trunk(dense, sparse, 0.5, gen)
    for ls, ld in zip(sparse.sparse_layers, dense.sparse_layers):
        assert torch.equal(ls.dense_weight(), ld.dense_weight())
    x = tasks[0].prepare(tasks[0].x_train[:4]).double()
    outs = []
    for m in (dense, sparse):
        m.train()
        xi = x.clone().requires_grad_(True)
        y = m(xi, 1)
        y.backward(torch.ones_like(y))
        grads = [(l.dst_module().sparse_parameter.grad, l) for l in m.sparse_layers]
        outs.append((y.detach(), xi.grad, grads))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])
    for (gd, ld), (gs, ls) in zip(outs[0][2], outs[1][2]):
        dW = gd.reshape(ld.dst_mask().shape)  # dense-masked: dense grad (masked by weight * mask)
        if isinstance(ls, MaskedConv2d):
            torch.testing.assert_close(gs.reshape(dW.shape), dW)
        else:  # sparse: trainable values only, equal to the dense gradient there
            torch.testing.assert_close(gs, dW[ls.inner.dst_mask()])
