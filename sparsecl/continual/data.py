"""Task-incremental benchmarks: a list of ``Task`` (train/test tensors, labels local to the task).

* ``split_digits``: scikit-learn's bundled 8x8 digits (no download), classes (0,1),(2,3),...,(8,9).
  Stratified train/test split by ``seed``; each task is standardised with the per-feature mean/std of
  its own training split (no statistics flow between tasks).
* ``split_cifar100``: CIFAR-100 from its standard python pickles ``<root>/cifar-100-python/{train,test,meta}``;
  5, 10 or 20 tasks over the fixed class order 0..99.
* ``mini_imagenet``: 100 classes in 10 tasks, from image folders ``<root>/train/<class>/*.jpg`` (and
  ``<root>/test/<class>/`` if present, else a seeded 5:1 per-class split), or from the common pickles
  ``<root>/mini-imagenet-cache-{train,val,test}.pkl`` (dicts with ``image_data`` [N,84,84,3] uint8 and
  ``class_dict`` {name: [indices]}), pooled and split 500/100 per class by ``seed``.

Images stay uint8 NCHW in memory; ``Task.batch`` converts to float and normalises with per-channel
train statistics of that task.
"""
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Task:
    """One task: ``x_*`` float [N, F] or uint8 [N, C, H, W]; ``y_*`` int64 labels in 0..len(classes)-1."""
    name: str
    classes: list
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor = field(default=None)
    std: torch.Tensor = field(default=None)

    @property
    def n_classes(self):
        return len(self.classes)

    def prepare(self, x):
        """Float input for the model (images: scale to [0,1] and normalise per channel)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return x


def _split_by_class(labels, class_groups, train_idx, test_idx, xs, name, images):
    tasks = []
    for t, group in enumerate(class_groups):
        remap = {c: i for i, c in enumerate(group)}
        parts = []
        for idx in (train_idx, test_idx):
            sel = idx[np.isin(labels[idx], group)]
            y = torch.as_tensor(np.array([remap[int(c)] for c in labels[sel]], dtype=np.int64))
            parts.append((xs[sel], y))
        (xtr, ytr), (xte, yte) = parts
        xtr, xte = torch.as_tensor(xtr), torch.as_tensor(xte)
        if images:
            f = xtr.float().div(255.0)
            mean, std = f.mean(dim=(0, 2, 3)), f.std(dim=(0, 2, 3)).clamp_min(1e-3)
        else:
            mean, std = xtr.mean(0), xtr.std(0)
            std = torch.where(std > 1e-6, std, torch.ones_like(std))
            xtr, xte = (xtr - mean) / std, (xte - mean) / std
        tasks.append(Task(f"{name}/{t}", [int(c) for c in group], xtr.contiguous(), ytr, xte.contiguous(), yte,
                          mean, std))
    return tasks


def _stratified(labels, test_fraction, seed):
    """(train_idx, test_idx): per class, a seeded shuffle, the first round(test_fraction*n) go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(test_fraction * idx.size))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _groups(n_classes, n_tasks):
    if n_tasks < 1 or n_classes % n_tasks:
        raise ValueError(f"{n_classes} classes cannot be split into {n_tasks} equal tasks")
    k = n_classes // n_tasks
    return [list(range(t * k, (t + 1) * k)) for t in range(n_tasks)]


def split_digits(n_tasks=5, seed=0, test_fraction=0.2):
    """Split-Digits: sklearn digits (1797 images, 64 features) in ``n_tasks`` tasks (default 5 x 2 classes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    tr, te = _stratified(y, test_fraction, seed)
    return _split_by_class(y, _groups(10, n_tasks), tr, te, x, "digits", images=False)


def _missing(root, what, layout):
    return FileNotFoundError(f"{what} not found under {os.path.abspath(root)!r}. Put the files there as:\n{layout}")


_CIFAR_LAYOUT = ("  <root>/cifar-100-python/train, test, meta  (the python pickles from "
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted)")


def _load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _get(d, key):
    return d[key.encode()] if key.encode() in d else d[key]


def split_cifar100(root, n_tasks=10, seed=0, size=32):
    """Split-CIFAR-100 in ``n_tasks`` (5, 10 or 20) tasks over class order 0..99; the official train/test split.
    ``size``: side of the square images returned (resized bilinearly when not 32)."""
    if n_tasks not in (5, 10, 20):
        raise ValueError(f"Split-CIFAR-100 has 5, 10 or 20 tasks, got {n_tasks}")
    base = os.path.join(root, "cifar-100-python")
    if not all(os.path.isfile(os.path.join(base, f)) for f in ("train", "test", "meta")):
        raise _missing(root, "CIFAR-100 (cifar-100-python/train, test, meta)", _CIFAR_LAYOUT)
    xs, ys = [], []
    for split in ("train", "test"):
        d = _load_pickle(os.path.join(base, split))
        data = np.asarray(_get(d, "data"), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{base}/{split}: 'data' must be [N, 3072] uint8, got shape {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(_get(d, "fine_labels"), dtype=np.int64))
    x = _resize(np.concatenate(xs), size)
    y = np.concatenate(ys)
    n_tr = xs[0].shape[0]
    tr, te = np.arange(n_tr), np.arange(n_tr, x.shape[0])
    return _split_by_class(y, _groups(100, n_tasks), tr, te, x, "cifar100", images=True)


_MINI_LAYOUT = ("  <root>/train/<class>/*.jpg  (optionally <root>/test/<class>/*.jpg; 100 class folders), or\n"
                "  <root>/mini-imagenet-cache-train.pkl, -val.pkl, -test.pkl  (dicts with 'image_data' "
                "[N,84,84,3] uint8 and 'class_dict' {class: [indices]})")
_IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def _resize(images, size):
    """uint8 [N, 3, H, W] -> [N, 3, size, size] by PIL's bilinear resize (antialiased when shrinking, as
    torchvision's ``transforms.Resize`` on PIL images); unchanged when already that size."""
    if images.shape[2:] == (size, size):
        return images
    from PIL import Image

    out = np.empty((images.shape[0], 3, size, size), dtype=np.uint8)
    for i, im in enumerate(images.transpose(0, 2, 3, 1)):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    return out


def _read_folder(folder, classes, size):
    from PIL import Image

    xs, ys = [], []
    for i, c in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(folder, c)) if f.lower().endswith(_IMG_EXT))
        for f in files:
            with Image.open(os.path.join(folder, c, f)) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                xs.append(np.asarray(im, dtype=np.uint8))
            ys.append(i)
    return np.stack(xs).transpose(0, 3, 1, 2), np.asarray(ys, dtype=np.int64)


def mini_imagenet(root, n_tasks=10, seed=0, size=84):
    """miniImageNet-100 in ``n_tasks`` tasks (classes in sorted-name order), images resized to ``size`` x
    ``size`` (84: the cache pickles' size; the reference paper trains at 32)."""
    pkls = [os.path.join(root, f"mini-imagenet-cache-{s}.pkl") for s in ("train", "val", "test")]
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(train_dir):
        classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
        x, y = _read_folder(train_dir, classes, size)
        if os.path.isdir(test_dir):
            xt, yt = _read_folder(test_dir, classes, size)
            tr, te = np.arange(len(y)), np.arange(len(y), len(y) + len(yt))
            x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
        else:
            tr, te = _stratified(y, 1 / 6, seed)
    elif all(os.path.isfile(p) for p in pkls):
        xs, ys, classes = [], [], []
        for p in pkls:
            d = _load_pickle(p)
            images, cdict = np.asarray(_get(d, "image_data"), dtype=np.uint8), _get(d, "class_dict")
            if images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"{p}: 'image_data' must be [N, H, W, 3] uint8, got shape {images.shape}")
            for name in sorted(cdict, key=lambda k: k.decode() if isinstance(k, bytes) else k):
                idx = np.asarray(cdict[name], dtype=np.int64)
                xs.append(images[idx])
                ys.append(np.full(idx.size, len(classes), dtype=np.int64))
                classes.append(name.decode() if isinstance(name, bytes) else name)
        x, y = _resize(np.concatenate(xs).transpose(0, 3, 1, 2), size), np.concatenate(ys)
        tr, te = _stratified(y, 1 / 6, seed)
    else:
        raise _missing(root, "miniImageNet", _MINI_LAYOUT)
    n = len(classes)
    if n % n_tasks:
        raise ValueError(f"miniImageNet under {root!r} has {n} classes, not divisible into {n_tasks} tasks")
    return _split_by_class(y, _groups(n, n_tasks), tr, te, np.ascontiguousarray(x), "miniimagenet", images=True)


DATASETS = {"digits": split_digits, "cifar100": split_cifar100, "miniimagenet": mini_imagenet}


def load_tasks(name, n_tasks=None, root=None, seed=0, size=None):
    """Dispatch by dataset name; ``root`` is required for the image datasets, ``size`` (image side in pixels;
    None: the dataset's own, 32 for CIFAR-100 and 84 for miniImageNet) applies to them only."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    kw = {"seed": seed}
    if n_tasks is not None:
        kw["n_tasks"] = n_tasks
    if name == "digits":
        return split_digits(**kw)
    if root is None:
        raise ValueError(f"dataset {name!r} needs data.root=<directory>")
    if size is not None:
        kw["size"] = size
    return DATASETS[name](root, **kw)
