import os
import pickle

import numpy as np
import pytest
import torch

from sparsecl.multitask import data as D


def test_scenes_deterministic_and_index_addressable():
    a = D.synthetic_scenes(6, size=24, seed=3)
    b = D.synthetic_scenes(6, size=24, seed=3)
    c = D.synthetic_scenes(3, size=24, seed=3)
    d = D.synthetic_scenes(6, size=24, seed=4)
    assert torch.equal(a.images, b.images)
    for t in a.targets:
        assert torch.equal(a.targets[t], b.targets[t])
        assert torch.equal(a.targets[t][:3], c.targets[t])  # sample i does not depend on n
    assert not torch.equal(a.images, d.images)


def test_scenes_format_and_consistency():
    ds = D.synthetic_scenes(20, size=32, seed=0)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.float32
    seg, depth, edge = ds.targets["seg"], ds.targets["depth"], ds.targets["edge"]
    assert seg.shape == (20, 32, 32) and seg.dtype == torch.int64
    assert depth.shape == (20, 1, 32, 32) and edge.shape == (20, 1, 32, 32)
    assert int(seg.min()) >= 0 and int(seg.max()) < len(D.SCENE_CLASSES)
    assert (seg >= 2).any(), "no objects rendered"
    assert float(depth.min()) >= 1.0 and float(depth.max()) <= D.FAR
    assert set(edge.unique().tolist()) <= {0.0, 1.0}
    # wall is at FAR, objects in front of it
    assert torch.all(depth[:, 0][seg == 0] == D.FAR)
    assert torch.all(depth[:, 0][seg >= 2] < D.FAR)
    # every label change between horizontal neighbours is marked as an edge on both sides
    change = seg[:, :, 1:] != seg[:, :, :-1]
    assert torch.all(edge[:, 0, :, 1:][change] == 1) and torch.all(edge[:, 0, :, :-1][change] == 1)
    assert set(ds.tasks) == {"seg", "depth", "edge"}


def test_edges_from_hand_case():
    lab = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    e = D.edges_from(lab)
    expected = np.array([[0, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=bool)
    assert np.array_equal(e, expected)
    flat = np.zeros((3, 3), dtype=int)
    depth = np.array([[1.0, 1.0, 5.0]] * 3)
    assert np.array_equal(D.edges_from(flat, depth), np.array([[0, 1, 1]] * 3, dtype=bool))


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def _make_nyud(root, ids, hw=(12, 16), normals_png=False):
    rng = np.random.default_rng(0)
    for sub in ("images", "segmentation", "depth", "normals", "gt_sets"):
        os.makedirs(root / sub, exist_ok=True)
    truth = {}
    for i in ids:
        img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        _png(str(root / "images" / f"{i}.png"), img)  # lossless stand-in for the .jpg
        os.rename(root / "images" / f"{i}.png", root / "images" / f"{i}.jpg")
        seg = rng.integers(0, 41, hw).astype(np.uint8)
        _png(str(root / "segmentation" / f"{i}.png"), seg)
        dep = rng.uniform(0.5, 9.0, hw).astype(np.float32)
        np.save(root / "depth" / f"{i}.npy", dep)
        n = rng.normal(size=(*hw, 3)).astype(np.float32)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        if normals_png:
            _png(str(root / "normals" / f"{i}.png"), np.round((n + 1) * 127.5).astype(np.uint8))
        else:
            np.save(root / "normals" / f"{i}.npy", n)
        truth[i] = (img, seg, dep, n)
    return truth


@pytest.mark.parametrize("normals_png", [False, True])
def test_nyud_loader(tmp_path, normals_png):
    truth = _make_nyud(tmp_path, ["0001", "0002", "0003"], normals_png=normals_png)
    (tmp_path / "gt_sets" / "train.txt").write_text("0001\n0003\n")
    ds = D.nyud(str(tmp_path), "train")
    assert len(ds) == 2 and ds.images.shape == (2, 3, 12, 16)
    img, seg, dep, n = truth["0003"]
    expect = seg.astype(np.int64) - 1
    expect[expect < 0] = D.IGNORE
    assert torch.equal(ds.targets["seg"][1], torch.from_numpy(expect))
    assert torch.allclose(ds.targets["depth"][1, 0], torch.from_numpy(dep))
    tol = 1e-6 if not normals_png else 1.0 / 127.5
    assert torch.allclose(ds.targets["normals"][1], torch.from_numpy(n).permute(2, 0, 1), atol=tol)
    assert torch.allclose(ds.images[1], (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.45) / 0.25)
    assert ds.tasks["seg"].channels == 40 and ds.tasks["normals"].kind == "normals"
    small = D.nyud(str(tmp_path), "train", size=(6, 8))
    assert small.images.shape == (2, 3, 6, 8) and small.targets["seg"].shape == (2, 6, 8)
    assert torch.equal(small.targets["seg"][1], torch.from_numpy(expect[::2, ::2]))


def test_nyud_missing_files_say_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="gt_sets/train.txt"):
        D.nyud(str(tmp_path / "nope"))
    _make_nyud(tmp_path, ["a"])
    (tmp_path / "gt_sets" / "val.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match="images/b"):
        D.nyud(str(tmp_path), "val")


def test_pascal_context_loader(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("JPEGImages", "semseg/pascal-context", "ImageSets/Context"):
        os.makedirs(tmp_path / sub)
    labs = {}
    for i in ("2008_000002", "2008_000003"):
        _png(str(tmp_path / "JPEGImages" / f"{i}.png"), rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
        os.rename(tmp_path / "JPEGImages" / f"{i}.png", tmp_path / "JPEGImages" / f"{i}.jpg")
        lab = rng.integers(0, 21, (10, 14)).astype(np.uint8)
        lab[0, 0] = 255
        labs[i] = lab
        _png(str(tmp_path / "semseg" / "pascal-context" / f"{i}.png"), lab)
    (tmp_path / "ImageSets" / "Context" / "val.txt").write_text("2008_000003\n")
    ds = D.pascal_context(str(tmp_path), "val")
    assert len(ds) == 1
    assert torch.equal(ds.targets["seg"][0], torch.from_numpy(labs["2008_000003"].astype(np.int64)))
    assert torch.equal(ds.targets["edge"][0, 0].bool(),
                       torch.from_numpy(D.edges_from(np.where(labs["2008_000003"] == 255, -1,
                                                              labs["2008_000003"].astype(np.int64)))))
    with pytest.raises(ValueError, match="num_classes"):
        D.pascal_context(str(tmp_path), "val", num_classes=5)
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        D.pascal_context(str(tmp_path / "missing"))


def _make_cifar(root, n_train=200, n_test=60):
    base = root / "cifar-100-python"
    os.makedirs(base)
    rng = np.random.default_rng(2)
    perm = rng.permutation(100)  # fine -> coarse grouping that is not simply f // 5
    coarse_of = {int(f): k // 5 for k, f in enumerate(perm)}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = np.concatenate([np.arange(100), rng.integers(0, 100, n - 100)]) if n >= 100 else rng.integers(0, 100, n)
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine.tolist(),
             b"coarse_labels": [coarse_of[int(f)] for f in fine]}
        with open(base / split, "wb") as f:
            pickle.dump(d, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20}, f)
    return perm, coarse_of


def test_cifar100_mtl_loader(tmp_path):
    perm, coarse_of = _make_cifar(tmp_path)
    ds = D.cifar100_mtl(str(tmp_path), "test")
    assert len(ds.tasks) == 20 and all(s.kind == "cls" and s.channels == 5 for s in ds.tasks.values())
    with open(tmp_path / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    for j, (fl, cl) in enumerate(zip(raw[b"fine_labels"], raw[b"coarse_labels"])):
        members = sorted(f for f, c in coarse_of.items() if c == cl)
        for k in range(20):
            t = int(ds.targets[f"c{k}"][j])
            assert t == (members.index(fl) if k == cl else D.IGNORE_CLS)
    img0 = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(ds.images[0], (img0 - 0.45) / 0.25)
    # the directory itself also works
    assert len(D.cifar100_mtl(str(tmp_path / "cifar-100-python"), "train")) == 200
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        D.cifar100_mtl(str(tmp_path / "none"))


def test_load_dataset_dispatch_and_errors():
    ds = D.load_dataset("scenes", "val", n=4, size=16, seed=1)
    assert len(ds) == 4 and ds.resolution == (16, 16)
    tr = D.load_dataset("scenes", "train", n=4, size=16, seed=1)
    assert not torch.equal(ds.images, tr.images)  # disjoint streams per split
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError):
        D.MultiTaskData(torch.zeros(2, 3, 4, 4), {"seg": torch.zeros(3, 4, 4)}, {"seg": D.TaskSpec("seg", "seg", 2)})
