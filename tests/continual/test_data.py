import os
import pickle

import numpy as np
import pytest
import torch

from sparsecl.continual.data import load_tasks, mini_imagenet, split_cifar100, split_digits


def test_split_digits_tasks_classes_and_split(seed):
    tasks = split_digits(seed=seed)
    assert [t.classes for t in tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    n = sum(len(t.y_train) + len(t.y_test) for t in tasks)
    assert n == 1797
    for t in tasks:
        assert t.x_train.shape[1] == 64 and t.x_train.dtype == torch.float32
        assert set(t.y_train.tolist()) == {0, 1} and set(t.y_test.tolist()) == {0, 1}
        # stratified: each class ~20% test
        for c in (0, 1):
            frac = (t.y_test == c).sum().item() / ((t.y_test == c).sum().item() + (t.y_train == c).sum().item())
            assert abs(frac - 0.2) < 0.02
        # standardised with the task's own training statistics
        assert torch.allclose(t.x_train.mean(0), torch.zeros(64), atol=1e-4)
        std = t.x_train.std(0)
        assert bool((((std - 1).abs() < 1e-3) | (std == 0)).all())
    again = split_digits(seed=seed)
    assert all(torch.equal(a.x_test, b.x_test) for a, b in zip(tasks, again))
    other = split_digits(seed=seed + 1)
    assert not all(torch.equal(a.y_train, b.y_train) and torch.equal(a.x_train, b.x_train)
                   for a, b in zip(tasks, other))


def _write_cifar(root, per_class_train=2, per_class_test=1, seed=0):
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "cifar-100-python")
    os.makedirs(base)
    for split, k in (("train", per_class_train), ("test", per_class_test)):
        labels = [c for c in range(100) for _ in range(k)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(os.path.join(base, split), "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [l // 5 for l in labels],
                         b"filenames": [b"x.png"] * len(labels), b"batch_label": split.encode()}, f)
    with open(os.path.join(base, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, f)
    return data


@pytest.mark.parametrize("n_tasks", [5, 10, 20])
def test_split_cifar100_from_python_pickles(tmp_path, n_tasks):
    _write_cifar(str(tmp_path))
    tasks = split_cifar100(str(tmp_path), n_tasks=n_tasks)
    k = 100 // n_tasks
    assert len(tasks) == n_tasks
    assert tasks[1].classes == list(range(k, 2 * k))
    assert tasks[0].x_train.shape == (2 * k, 3, 32, 32) and tasks[0].x_train.dtype == torch.uint8
    assert tasks[0].x_test.shape == (k, 3, 32, 32)
    x = tasks[0].prepare(tasks[0].x_train)
    assert x.dtype == torch.float32 and torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_cifar_pixel_layout_is_channel_major(tmp_path):
    data = _write_cifar(str(tmp_path), per_class_test=1)
    tasks = split_cifar100(str(tmp_path), n_tasks=100 // 20)
    # test set: class 0 is the first row; its red plane is the first 1024 bytes
    assert torch.equal(tasks[0].x_test[0, 0].flatten(), torch.as_tensor(data[0, :1024]))


def test_missing_dataset_dirs_say_where_to_put_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        split_cifar100(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-train.pkl"):
        mini_imagenet(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="data.root"):
        load_tasks("cifar100")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_tasks("mnist")


def test_mini_imagenet_image_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(20):
        for i in range(6):
            d = tmp_path / "train" / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (90, 80, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    tasks = mini_imagenet(str(tmp_path), n_tasks=10, seed=0)
    assert len(tasks) == 10 and tasks[0].n_classes == 2
    assert tasks[0].x_train.shape[1:] == (3, 84, 84)
    assert len(tasks[0].y_train) + len(tasks[0].y_test) == 12 and len(tasks[0].y_test) == 2


def test_mini_imagenet_pickles(tmp_path):
    rng = np.random.default_rng(0)
    c = 0
    for split, n_cls in (("train", 6), ("val", 2), ("test", 2)):
        images = rng.integers(0, 256, (n_cls * 6, 84, 84, 3), dtype=np.uint8)
        cdict = {f"n{c + i:08d}": list(range(i * 6, (i + 1) * 6)) for i in range(n_cls)}
        c += n_cls
        with open(tmp_path / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": cdict}, f)
    tasks = mini_imagenet(str(tmp_path), n_tasks=5, seed=1)
    assert len(tasks) == 5 and all(t.n_classes == 2 for t in tasks)
    assert sum(len(t.y_train) + len(t.y_test) for t in tasks) == 60
    # class 0 is the first train-pickle class: its images are the first 6 of that pickle
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "rb") as f:
        first = pickle.load(f)["image_data"][:6]
    got = torch.cat([tasks[0].x_train[tasks[0].y_train == 0], tasks[0].x_test[tasks[0].y_test == 0]])
    want = torch.as_tensor(first).permute(0, 3, 1, 2)
    assert sorted(map(lambda t: t.sum().item(), got)) == sorted(map(lambda t: t.sum().item(), want))
    with pytest.raises(ValueError, match="not divisible"):
        mini_imagenet(str(tmp_path), n_tasks=3)
