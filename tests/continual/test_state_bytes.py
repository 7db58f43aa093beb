"""metrics.json's total state is everything the trunk and the trainer keep between steps: the accounted bytes
(``metrics.trunk_state_bytes``, by part) equal an independent walk over every tensor reachable from the trunk
layers (union caches, reused values, dispatch dense weights included), the trunk's optimizer state, the
ownership, the per-task masks, the frozen-entry guard and the DST engine, at the end of every task, in both
modes and both protocols. A tensor added to a layer but not accounted makes the comparison fail."""
import pytest
import torch
from torch import nn

from sparsecl.continual import ContinualTrainer
from sparsecl.continual import metrics as M
from sparsecl.continual.data import split_digits

from ._cfg import MODES, tiny

TASKS = split_digits()


def reachable_bytes(roots, skip=()):
    """Bytes of the distinct storages of every tensor reachable from ``roots`` through containers, module and
    sparsecl object attributes, and parameters' gradients (objects in ``skip`` are not entered)."""
    seen, storages = {id(o) for o in skip}, {}

    def visit(o):
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            storages[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
            if isinstance(o, nn.Parameter) and o.grad is not None:
                visit(o.grad)
        elif isinstance(o, dict):
            for k, v in o.items():
                visit(k)
                visit(v)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                visit(v)
        elif hasattr(o, "__dict__") and type(o).__module__.startswith(("sparsecl", "torch.nn")):
            visit(vars(o))

    for r in roots:
        visit(r)
    return sum(n for ptr, n in storages.items() if n)


class Audited(ContinualTrainer):
    """Compares the accounted state with the walk wherever the trainer accounts it (the end of each task)."""

    def __init__(self, *a, extra=None, **k):
        super().__init__(*a, **k)
        self.audits, self.extra = [], extra


@pytest.fixture
def audit(monkeypatch):
    def wrap(trainer):
        account = M.trunk_state_bytes

        def audited(layers, opt, own, task_masks, guard, dst):
            if trainer.extra is not None:
                trainer.extra(layers)
            counted = account(layers, opt, own, task_masks, guard, dst)
            trunk = {id(p) for l in layers for p in l.parameters()}
            state = {k: v for k, v in opt.state.items() if id(k) in trunk}
            walked = reachable_bytes([layers, state, own, task_masks, guard, dst],
                                     skip=[trainer.model, opt, trainer.model.sparse_layers])
            trainer.audits.append((counted, walked))
            return counted
        monkeypatch.setattr(M, "trunk_state_bytes", audited)
        return trainer
    return wrap


@pytest.mark.parametrize("reuse", ["mask", "all"])
@pytest.mark.parametrize("mode", MODES)
def test_accounted_state_is_everything_reachable(tmp_path, audit, mode, reuse):
    tr = audit(Audited(tiny(tmp_path, mode=mode, reuse=reuse, epochs=1), TASKS))
    res = tr.run()
    assert len(tr.audits) == 5
    for t, (counted, walked) in enumerate(tr.audits):
        assert counted["total"] == walked, f"task {t}: accounted {counted}, reachable {walked}"
        assert counted["total"] == sum(counted[k] for k in M.STATE_PARTS)
        assert counted["weights"] > 0 and counted["index"] > 0 and counted["dst"] > 0
        assert (counted["derived"] > 0) == (mode == "sparse")
    assert [r["state_bytes"] for r in res["tasks"]] == [c for c, _ in tr.audits]
    if reuse == "mask":
        # accounted before the task's own mask is encoded (at its freeze): tasks 0..T-2's masks
        assert 0 < res["tasks"][-1]["state_bytes"]["masks"] < res["mask_bytes"]


@pytest.mark.parametrize("mode", MODES)
def test_an_unaccounted_tensor_is_caught(tmp_path, audit, mode):
    def add_cache(layers):  # a new persistent tensor nobody accounts for
        layers[0].__dict__["_cache"] = torch.zeros(1000)

    tr = audit(Audited(tiny(tmp_path, mode=mode, epochs=1), TASKS, extra=add_cache))
    tr.run()
    assert all(walked == counted["total"] + 4000 for counted, walked in tr.audits)


def test_sparse_total_counts_the_union_cache_and_dispatch_weight(tmp_path):
    """The parts a sparse layer rebuilds (union index, positions, value buffer; a dense pass's weight) are
    counted under derived, each storage once."""
    tr = ContinualTrainer(tiny(tmp_path, epochs=1), TASKS)
    tr.run()
    l = tr.layers[1]
    u = l.union()
    union_bytes = sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t
                                                             for t in u.tensors()}.values())
    shared = sum(t.untyped_storage().nbytes() for t in (u.trainable_rows, u.trainable_cols))  # the inner's index
    parts = M.trunk_state_bytes([l])
    assert parts["derived"] == union_bytes - shared
    l.inner.dispatch = "dense"
    l(torch.randn(4, l.in_features))
    dense = l.inner.dispatcher.dense
    assert M.trunk_state_bytes([l])["derived"] >= parts["derived"] + dense.buffer.untyped_storage().nbytes()


@pytest.mark.parametrize("model", ["cnn", "mobilenetv2"])
@pytest.mark.parametrize("mode", MODES)
def test_accounted_state_of_conv_trunks(tmp_path, audit, mode, model):
    """Conv trunks too (sparse: SparseTrunkConv2d; MobileNetV2's depthwise convs stay dense-masked in both)."""
    from .test_memory import _image_tasks

    width = 8 if model == "cnn" else 0.25
    cfg = tiny(tmp_path, mode=mode, epochs=1, model={"name": model, "width": width}, batch_size=4)
    tr = audit(Audited(cfg, _image_tasks(n_tasks=2, n=8, size=32)))
    tr.run()
    assert len(tr.audits) == 2
    for counted, walked in tr.audits:
        assert counted["total"] == walked
