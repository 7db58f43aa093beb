"""The up-front memory check and the per-model default widths."""
import pytest
import torch

from sparsecl.continual import ContinualTrainer
from sparsecl.continual.data import Task
from sparsecl.continual.memory import InsufficientMemoryError, available_bytes, check_memory, estimate_bytes
from sparsecl.continual.models import DEFAULT_WIDTH, build_model
from sparsecl.continual.trainer import DEFAULTS, merge_config
from sparsecl.errors import UserError

from ._cfg import MODES, tiny


def _image_tasks(n_tasks=2, n=8, size=32):
    g = torch.Generator().manual_seed(0)
    return [Task(f"img/{t}", [0, 1], torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                 torch.arange(n) % 2, torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=g),
                 torch.arange(4) % 2, torch.full((3,), 0.5), torch.full((3,), 0.25)) for t in range(n_tasks)]


def _cfg(**kw):
    return merge_config(DEFAULTS, kw)


def test_available_memory_is_read_from_the_system():
    avail = available_bytes()
    assert avail is None or avail > 0


def test_estimate_grows_with_width_batch_and_density():
    tasks = _image_tasks()
    base = estimate_bytes(_cfg(model={"name": "resnet18", "width": 8}, batch_size=4), tasks)
    assert all(base[k] > 0 for k in ("activations", "trunk", "other")) and base["total"] == sum(
        base[k] for k in ("activations", "trunk", "other"))
    wide = estimate_bytes(_cfg(model={"name": "resnet18", "width": 16}, batch_size=4), tasks)
    assert wide["trunk"] > 3.5 * base["trunk"] and wide["activations"] > 1.5 * base["activations"]
    big_batch = estimate_bytes(_cfg(model={"name": "resnet18", "width": 8}, batch_size=16), tasks)
    assert big_batch["activations"] > 3.5 * base["activations"] and big_batch["trunk"] == base["trunk"]
    denser = estimate_bytes(_cfg(model={"name": "resnet18", "width": 8}, batch_size=4, density=0.3), tasks)
    assert denser["trunk"] > base["trunk"]  # sparse state scales with the stored entries
    dense, dense3 = (estimate_bytes(_cfg(model={"name": "resnet18", "width": 8}, batch_size=4, mode="dense-masked",
                                         density=d), tasks) for d in (0.1, 0.3))
    # dense-masked state scales with the positions; only the guard's index of the frozen ones (8 bytes each, at
    # most min(1, tasks * density) of them) grows with the density
    with torch.device("meta"):
        model = build_model("resnet18", tasks, mode="dense-masked", width=8)
    positions = sum(l.dst_mask().numel() for l in model.sparse_layers)
    assert 0 < dense3["trunk"] - dense["trunk"] <= 8 * (0.6 - 0.2) * positions + 8 * len(model.sparse_layers)
    adam = estimate_bytes(_cfg(model={"name": "resnet18", "width": 8}, batch_size=4, mode="dense-masked",
                               optimizer={"name": "adam", "lr": 1e-3}), tasks)
    assert adam["trunk"] > dense["trunk"]


def test_oversized_config_is_refused_with_what_it_needs_and_what_to_change():
    tasks = _image_tasks()
    cfg = _cfg(model={"name": "resnet18", "width": 64}, batch_size=64)
    need = estimate_bytes(cfg, tasks)["total"]
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* GiB.* only 0\.5 GiB is available.*model\.width "
                                                      r"\(now 64, model 'resnet18'\) or batch_size"):
        check_memory(cfg, tasks, available=2 ** 29)
    assert check_memory(cfg, tasks, available=int(need * 1.5))["total"] == need
    assert issubclass(InsufficientMemoryError, UserError) and issubclass(InsufficientMemoryError, ValueError)


def test_trainer_refuses_before_building_the_model(monkeypatch, tmp_path):
    """A ResNet-18 at the MLP's width (1024 channels: ~2.8e9 trunk positions) is refused up front, not OOM-killed."""
    built = []
    import sparsecl.continual.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(InsufficientMemoryError, match="lower model.width"):
        ContinualTrainer(tiny(tmp_path, model={"name": "resnet18", "width": 1024}), tasks=_image_tasks())
    assert not built


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "mobilenetv2"])
def test_each_model_gets_its_own_default_width(name, tmp_path, monkeypatch):
    import sparsecl.continual.trainer as trainer_mod

    class _Model(torch.nn.Module):
        sparse_layers = []

    seen = {}
    monkeypatch.setattr(trainer_mod, "build_model", lambda n, tasks, mode, width, depth: seen.update(width=width)
                        or _Model())
    monkeypatch.setattr(trainer_mod, "check_memory", lambda cfg, tasks: None)
    cfg = tiny(tmp_path, model={"name": name})
    cfg["model"] = {"name": name}  # no width given
    tr = ContinualTrainer(cfg, tasks=_image_tasks())
    assert seen["width"] == DEFAULT_WIDTH[name] and tr.cfg["model"]["width"] == DEFAULT_WIDTH[name]
    assert DEFAULT_WIDTH == {"mlp": 1024, "cnn": 32, "resnet18": 64, "mobilenetv2": 1.0}


def _trunk_state_per_task(tmp_path, **kw):
    tasks = _image_tasks(n_tasks=4) if kw.get("model", {}).get("name") == "cnn" else None
    from sparsecl.continual.data import split_digits

    tr = ContinualTrainer(tiny(tmp_path, epochs=1, **kw), tasks or split_digits())
    res = tr.run()
    return tr, [r["state_bytes"]["total"] for r in res["tasks"]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reuse", ["mask", "all"])
def test_estimate_covers_the_measured_trunk_state_and_follows_reuse(tmp_path, mode, reuse):
    """The trunk estimate bounds what the trunk really holds at the end of every task (it also covers the
    transient DST and evaluation tensors, so it is larger), and under reuse: mask it is below reuse: all (the
    union stays at density d)."""
    tr, measured = _trunk_state_per_task(tmp_path, mode=mode, reuse=reuse, density=0.2)
    est = estimate_bytes(tr.cfg, tr.tasks)["trunk"]
    assert max(measured) <= est
    if mode == "sparse":
        other = estimate_bytes(merge_config(tr.cfg, {"reuse": "all" if reuse == "mask" else "mask"}), tr.tasks)
        assert (est < other["trunk"]) == (reuse == "mask")
