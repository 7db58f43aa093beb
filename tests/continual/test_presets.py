"""The paper presets (configs/continual/paper-*.yaml): they hold the reference paper code's settings, parse,
and run end to end on small generated files in the real formats (CIFAR-100 python pickles, miniImageNet
cache pickles) with 1 epoch per task and a narrower model of the same architecture (CI time)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from sparsecl.cli import main, parse_args
from sparsecl.continual.run import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESETS = os.path.join(ROOT, "configs", "continual")

# narrower models for the end-to-end runs: MobileNetV2 x0.25, ResNet-18 with 8 first-stage channels
NARROW = {"mobilenetv2": "model.width=0.25", "resnet18": "model.width=8"}

# preset -> (dataset, tasks, model, width, batch size, epochs per task, density, init, growth): the paper
# code's settings, with its README's example run per preset for the study variables (density, init, growth)
PAPER = {
    "paper-cifar100-5": ("cifar100", 5, "mobilenetv2", 1.0, 64, 100, 0.1, "uniform", "momentum"),
    "paper-cifar100-10": ("cifar100", 10, "mobilenetv2", 1.0, 64, 100, 0.2, "erk", "random"),
    "paper-cifar100-20": ("cifar100", 20, "mobilenetv2", 1.0, 64, 25, 0.05, "uniform", "unfired"),
    "paper-miniimagenet-10": ("miniimagenet", 10, "resnet18", 64, 128, 100, 0.2, "erk", "gradient"),
}


def write_cifar100(root, per_class_train=2, per_class_test=1, seed=0):
    """<root>/cifar-100-python/{train,test,meta} as the official pickles: dicts with bytes keys, 'data' uint8
    [N, 3072] (the R, G and B planes of a 32x32 image), 'fine_labels' and 'coarse_labels' lists."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "cifar-100-python")
    os.makedirs(base)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        labels = np.repeat(np.arange(100), n)
        rng.shuffle(labels)
        d = {b"batch_label": f"{split} batch".encode(), b"filenames": [f"{i}.png".encode() for i in range(labels.size)],
             b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
             b"data": rng.integers(0, 256, (labels.size, 3072), dtype=np.uint8)}
        with open(os.path.join(base, split), "wb") as f:
            pickle.dump(d, f, protocol=2)
    with open(os.path.join(base, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}, f, protocol=2)


def write_miniimagenet(root, per_class=6, seed=0):
    """<root>/mini-imagenet-cache-{train,val,test}.pkl as the common cache: 64/16/20 classes, dicts with
    'image_data' uint8 [N, 84, 84, 3] and 'class_dict' {wnid: [row indices]}."""
    rng = np.random.default_rng(seed)
    os.makedirs(root)
    first = 0
    for split, n_classes in (("train", 64), ("val", 16), ("test", 20)):
        wnids = [f"n{first + c:08d}" for c in range(n_classes)]
        first += n_classes
        d = {"image_data": rng.integers(0, 256, (n_classes * per_class, 84, 84, 3), dtype=np.uint8),
             "class_dict": {w: list(range(c * per_class, (c + 1) * per_class)) for c, w in enumerate(wnids)}}
        with open(os.path.join(root, f"mini-imagenet-cache-{split}.pkl"), "wb") as f:
            pickle.dump(d, f)


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    cifar, mini = tmp_path_factory.mktemp("cifar"), tmp_path_factory.mktemp("mini") / "miniimagenet"
    write_cifar100(str(cifar))
    write_miniimagenet(str(mini))
    return {"cifar100": str(cifar), "miniimagenet": str(mini)}


def _config(name, *extra):
    return build_config(parse_args(["continual", "-c", os.path.join(PRESETS, name + ".yaml"), *extra]))


def test_every_paper_preset_is_listed_here_and_in_the_readme():
    shipped = sorted(f[:-5] for f in os.listdir(PRESETS) if f.startswith("paper-") and f.endswith(".yaml"))
    assert shipped == sorted(PAPER)
    readme = open(os.path.join(PRESETS, "README.md")).read()
    for name in PAPER:
        assert f"{name}.yaml" in readme


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_holds_the_papers_settings(name):
    dataset, tasks, model, width, batch, epochs, density, init, growth = PAPER[name]
    cfg = _config(name, "--data-root", "/data")
    size = {"miniimagenet": 32}.get(dataset)  # the paper resizes miniImageNet to CIFAR's 32x32
    assert cfg["data"] == {"name": dataset, "n_tasks": tasks, "seed": 0, "root": "/data", "image_size": size}
    assert cfg["model"]["name"] == model and cfg["model"]["width"] == width
    assert (cfg["batch_size"], cfg["epochs"]) == (batch, epochs)
    assert (cfg["density"], cfg["init"], cfg["growth"], cfg["prune"]) == (density, init, growth, "magnitude")
    assert (cfg["optimizer"]["name"], cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"]) == ("adam", 1e-3, 0)
    assert cfg["lr_schedule"] == {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}
    assert (cfg["update_every"], cfg["drop_fraction"], cfg["drop_fraction_end"]) == (100, 0.5, 0.005)
    assert cfg["mode"] == "sparse" and cfg["out"] == f"runs/continual/{name}"


@pytest.mark.parametrize("density", [0.2, 0.1, 0.05])
def test_density_is_an_override(density):
    assert _config("paper-cifar100-10", "--data-root", "/data", "--density", str(density))["density"] == density


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_runs_on_files_in_the_real_format(name, data_roots, tmp_path, capsys):
    dataset, tasks, model = PAPER[name][:3]
    out = tmp_path / "run"
    rc = main(["continual", "-c", os.path.join(PRESETS, name + ".yaml"), "--data-root", data_roots[dataset],
               "--out", str(out), "--epochs", "1", "--update-every", "1", "--threads", "1", "--no-progress",
               NARROW[model]])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["acc_matrix"]) == tasks and all(a is not None for row in m["acc_matrix"] for a in row)
    assert m["config"]["model"]["name"] == model and m["config"]["lr_schedule"]["name"] == "multistep"
    assert all(t["steps"] >= 1 and t["dst_updates"] >= 1 for t in m["tasks"])


def test_miniimagenet_is_resized_to_the_requested_size_as_torchvision_resize_on_pil(data_roots):
    from PIL import Image

    from sparsecl.continual.data import load_tasks

    full = load_tasks("miniimagenet", n_tasks=10, root=data_roots["miniimagenet"])
    small = load_tasks("miniimagenet", n_tasks=10, root=data_roots["miniimagenet"], size=32)
    x84, x32 = full[3].x_train, small[3].x_train
    assert tuple(x84.shape[1:]) == (3, 84, 84) and tuple(x32.shape[1:]) == (3, 32, 32)
    assert torch.equal(full[3].y_train, small[3].y_train)
    im = Image.fromarray(x84[0].permute(1, 2, 0).numpy().astype(np.uint8)).resize((32, 32), Image.BILINEAR)
    assert torch.equal(x32[0], torch.as_tensor(np.asarray(im)).permute(2, 0, 1).to(x32.dtype))


@pytest.mark.parametrize("bad", ["0", "7", "-32", "1000"])
def test_image_size_out_of_range_is_a_config_error(bad, capsys):
    rc = main(["continual", "--dataset", "miniimagenet", "--data-root", "/nonexistent", "--model", "resnet18",
               "data.image_size=" + bad])
    assert rc == 2 and "data.image_size" in capsys.readouterr().err
