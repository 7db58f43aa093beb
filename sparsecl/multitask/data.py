"""Multi-task datasets: an embedded procedural scene generator and loaders for NYUD-v2, PASCAL-Context and
CIFAR100-MTL in their standard distributed layouts.

Every dataset is a ``MultiTaskData``: ``images`` float32 [N, 3, H, W] (normalised per channel), ``targets``
{task: tensor [N, ...]} and ``tasks`` {task: TaskSpec}. Everything is held in memory; these are small.

Target conventions (what the losses and metrics in ``metrics.py`` expect):
  seg      int64 [N, H, W], class index, ``IGNORE`` (255) = void
  depth    float32 [N, 1, H, W], metres (or scene units), 0 = invalid
  normals  float32 [N, 3, H, W], unit vectors, all-zero = invalid
  edge     float32 [N, 1, H, W], 1 = boundary pixel, 0 = not
  cls      int64 [N], class index, ``IGNORE_CLS`` (-100) = not part of this task

Procedural scenes (``synthetic_scenes``)
---------------------------------------
A camera looks at a ground plane under a wall. Sample ``i`` of seed ``s`` is drawn from its own generator
``numpy.random.default_rng([s, i])``, so any sample is reproducible on its own and the set does not depend on
how many samples are drawn. Per scene:
  * horizon row h ~ U(0.3, 0.5)·H. Above it, the wall (class 0) at depth ``FAR`` (10). Below it, the ground
    (class 1) with the pinhole ground-plane depth ``z(y) = K / (y - h)`` (K = 0.5·H), clipped to [1, FAR];
  * 1..4 objects, each of a random class among disk (2), box (3), triangle (4) and cross (5), at depth
    z ~ U(2, 8). An object stands on the ground: its bottom edge is at the row where the ground has depth z,
    and its size is ∝ 1/z (perspective), so position and size are depth cues. Objects are painted far to
    near, so nearer objects occlude farther ones in the image, the label map and the depth map alike;
  * colours are random per object and per background region (class is carried by shape, not colour),
    shaded darker with depth, plus a horizontal texture on the ground and Gaussian pixel noise (σ = 0.03);
  * edges: a pixel is a boundary if a 4-neighbour has another label or a depth that differs by > 1.0.
Tasks: ``seg`` (6 classes), ``depth`` and ``edge``.
"""
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = 255
IGNORE_CLS = -100
FAR = 10.0
SCENE_CLASSES = ("wall", "ground", "disk", "box", "triangle", "cross")


@dataclass(frozen=True)
class TaskSpec:
    """A task: ``kind`` in {seg, depth, normals, edge, cls}; ``channels`` = decoder output channels."""
    name: str
    kind: str
    channels: int

    @property
    def dense(self):
        return self.kind != "cls"


class MultiTaskData(torch.utils.data.Dataset):
    """In-memory multi-task dataset: ``images`` [N, 3, H, W] float32, ``targets`` {task: [N, ...]}."""

    def __init__(self, images, targets, tasks):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        missing = set(tasks) - set(targets)
        if missing:
            raise ValueError(f"tasks without targets: {sorted(missing)}")
        for name, t in targets.items():
            if t.shape[0] != images.shape[0]:
                raise ValueError(f"target {name!r} has {t.shape[0]} samples, images have {images.shape[0]}")
        self.images, self.targets, self.tasks = images, dict(targets), dict(tasks)

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], {k: v[i] for k, v in self.targets.items()}

    def batch(self, idx):
        """(images, {task: targets}) for an index tensor: the fast path the trainer uses."""
        return self.images[idx], {k: v[idx] for k, v in self.targets.items()}

    @property
    def resolution(self):
        return tuple(self.images.shape[-2:])


def _normalise(images):
    """uint8 [0, 255] or float [0, 1] -> float32 (x - 0.45) / 0.25: fixed constants, so splits agree."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return ((x - 0.45) / 0.25).contiguous()


def edges_from(label, depth=None, depth_jump=1.0):
    """Bool [H, W]: pixels with a 4-neighbour of another label (or depth differing by > depth_jump)."""
    edge = np.zeros(label.shape, dtype=bool)
    for axis in (0, 1):
        d = np.diff(label, axis=axis) != 0
        if depth is not None:
            d |= np.abs(np.diff(depth, axis=axis)) > depth_jump
        if axis == 0:
            edge[:-1] |= d
            edge[1:] |= d
        else:
            edge[:, :-1] |= d
            edge[:, 1:] |= d
    return edge


def _shape_mask(kind, yy, xx, cy, cx, r):
    dy, dx = (yy - cy) / r, (xx - cx) / r
    if kind == 2:  # disk
        return dy ** 2 + dx ** 2 <= 1.0
    if kind == 3:  # box
        return (np.abs(dy) <= 0.85) & (np.abs(dx) <= 0.85)
    if kind == 4:  # triangle, apex up
        return (dy <= 1.0) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) / 2.0)
    # cross
    return ((np.abs(dy) <= 1.0) & (np.abs(dx) <= 0.33)) | ((np.abs(dx) <= 1.0) & (np.abs(dy) <= 0.33))


def render_scene(rng, size):
    """One scene: (image float32 [size, size, 3] in [0, 1], label int64 [size, size], depth float32, edge bool)."""
    H = W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    K = 0.5 * H
    h = rng.uniform(0.3, 0.5) * H
    ground = yy > h + 0.5
    depth = np.full((H, W), FAR)
    depth[ground] = np.clip(K / (yy[ground] - h), 1.0, FAR)
    label = np.where(ground, 1, 0).astype(np.int64)
    wall_c, ground_c = rng.uniform(0.2, 0.9, 3), rng.uniform(0.2, 0.9, 3)
    image = np.where(ground[..., None], ground_c, wall_c)
    image = image * (1.0 + 0.15 * np.sin(yy * rng.uniform(0.8, 1.6))[..., None] * ground[..., None])
    n = rng.integers(1, 5)
    objects = [(rng.uniform(2.0, 8.0), int(rng.integers(2, 6)), rng.uniform(0.0, 1.0, 3), rng.uniform(0.1, 0.9))
               for _ in range(n)]
    for z, kind, colour, xfrac in sorted(objects, key=lambda o: -o[0]):
        r = rng.uniform(0.3, 0.45) * H * 2.0 / z
        bottom = h + K / z
        m = _shape_mask(kind, yy, xx, bottom - r, xfrac * W, r)
        label[m] = kind
        depth[m] = z
        image[m] = colour
    image = image * (1.0 - 0.04 * depth)[..., None]
    image = np.clip(image + rng.normal(0.0, 0.03, image.shape), 0.0, 1.0)
    return image.astype(np.float32), label, depth.astype(np.float32), edges_from(label, depth)


def synthetic_scenes(n, size=32, seed=0):
    """``n`` procedural scenes (see module docstring); deterministic in (seed, index)."""
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    imgs, labels, depths, edges = [], [], [], []
    for i in range(n):
        im, lab, dep, edg = render_scene(np.random.default_rng([seed, i]), size)
        imgs.append(im), labels.append(lab), depths.append(dep), edges.append(edg)
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    targets = {
        "seg": torch.from_numpy(np.stack(labels)),
        "depth": torch.from_numpy(np.stack(depths))[:, None],
        "edge": torch.from_numpy(np.stack(edges)).float()[:, None],
    }
    tasks = {"seg": TaskSpec("seg", "seg", len(SCENE_CLASSES)), "depth": TaskSpec("depth", "depth", 1),
             "edge": TaskSpec("edge", "edge", 1)}
    return MultiTaskData(_normalise(images), targets, tasks)


# ---------------------------------------------------------------- real datasets from local directories

def _require_dir(root, name, layout):
    if root is None or not os.path.isdir(root):
        raise FileNotFoundError(f"{name} not found at {root!r}. Put the files there in this layout:\n{layout}")


def _read_split(path, name, layout):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: split file {path} is missing. Expected layout:\n{layout}")
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise ValueError(f"{name}: split file {path} lists no images")
    return ids


def _load_image(path, size):
    from PIL import Image

    im = Image.open(path).convert("RGB")
    if size is not None:
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _resize_nearest(a, size):
    """Nearest-neighbour resize of an [H, W, ...] array (labels, depth, normals) to ``size`` = (h, w)."""
    if size is None or a.shape[:2] == tuple(size):
        return a
    rows = (np.arange(size[0]) * a.shape[0] // size[0])
    cols = (np.arange(size[1]) * a.shape[1] // size[1])
    return a[rows][:, cols]


def _load_png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


def _find(path_noext, exts, name, layout):
    for ext in exts:
        if os.path.isfile(path_noext + ext):
            return path_noext + ext
    raise FileNotFoundError(f"{name}: {path_noext}{{{','.join(exts)}}} is missing. Expected layout:\n{layout}")


NYUD_LAYOUT = """  <root>/images/<id>.jpg          RGB image
  <root>/segmentation/<id>.png    uint8 labels, 0 = void, 1..40 = the 40 NYUD-v2 classes
  <root>/depth/<id>.npy           float depth in metres [H, W] (0 = invalid)
  <root>/normals/<id>.npy         float [H, W, 3] unit normals in [-1, 1] (or <id>.png, RGB = (n + 1) * 127.5)
  <root>/gt_sets/train.txt, val.txt   one <id> per line
(the MTI-Net / ATRC NYUD_MT layout)"""


def nyud(root, split="train", size=None, tasks=("seg", "depth", "normals")):
    """NYUD-v2 (795 train / 654 val in the standard split) with seg (40 classes), depth and normals.

    ``size`` = (h, w) resizes everything (bilinear image, nearest targets); None keeps the files' size.
    """
    name = "NYUD-v2"
    _require_dir(root, name, NYUD_LAYOUT)
    unknown = set(tasks) - {"seg", "depth", "normals"}
    if unknown:
        raise ValueError(f"NYUD-v2 has tasks seg, depth, normals; unknown {sorted(unknown)}")
    ids = _read_split(os.path.join(root, "gt_sets", f"{split}.txt"), name, NYUD_LAYOUT)
    imgs, out = [], {t: [] for t in tasks}
    for i in ids:
        imgs.append(_load_image(_find(os.path.join(root, "images", i), (".jpg", ".png"), name, NYUD_LAYOUT), size))
        hw = imgs[-1].shape[:2]
        if "seg" in tasks:
            lab = _load_png(_find(os.path.join(root, "segmentation", i), (".png",), name, NYUD_LAYOUT))
            lab = lab.astype(np.int64) - 1
            lab[lab < 0] = IGNORE
            out["seg"].append(_resize_nearest(lab, hw))
        if "depth" in tasks:
            d = np.load(_find(os.path.join(root, "depth", i), (".npy",), name, NYUD_LAYOUT)).astype(np.float32)
            out["depth"].append(_resize_nearest(np.squeeze(d), hw)[None])
        if "normals" in tasks:
            p = _find(os.path.join(root, "normals", i), (".npy", ".png"), name, NYUD_LAYOUT)
            nrm = np.load(p).astype(np.float32) if p.endswith(".npy") else _load_png(p)[..., :3] / 127.5 - 1.0
            if nrm.ndim != 3 or nrm.shape[-1] != 3:
                raise ValueError(f"{p}: normals must be [H, W, 3], got {nrm.shape}")
            out["normals"].append(np.moveaxis(_resize_nearest(nrm.astype(np.float32), hw), -1, 0))
    specs = {"seg": TaskSpec("seg", "seg", 40), "depth": TaskSpec("depth", "depth", 1),
             "normals": TaskSpec("normals", "normals", 3)}
    return MultiTaskData(_normalise(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)),
                         {t: torch.from_numpy(np.stack(v)) for t, v in out.items()}, {t: specs[t] for t in tasks})


PASCAL_LAYOUT = """  <root>/JPEGImages/<id>.jpg                    RGB image
  <root>/semseg/pascal-context/<id>.png         uint8 labels 0..C-1, 255 = void
  <root>/ImageSets/Context/train.txt, val.txt   one <id> per line
(the MTI-Net / ATRC PASCAL_MT layout)"""


def pascal_context(root, split="train", size=None, num_classes=21):
    """PASCAL-Context with tasks seg (``num_classes`` classes, 21 as in PASCAL_MT) and edge.

    Edges are derived from the label map (boundaries between different labels), not from the .mat files.
    """
    name = "PASCAL-Context"
    _require_dir(root, name, PASCAL_LAYOUT)
    ids = _read_split(os.path.join(root, "ImageSets", "Context", f"{split}.txt"), name, PASCAL_LAYOUT)
    imgs, labels, edges = [], [], []
    for i in ids:
        imgs.append(_load_image(_find(os.path.join(root, "JPEGImages", i), (".jpg", ".png"), name, PASCAL_LAYOUT),
                                size))
        lab = _load_png(_find(os.path.join(root, "semseg", "pascal-context", i), (".png",), name, PASCAL_LAYOUT))
        lab = _resize_nearest(lab.astype(np.int64), imgs[-1].shape[:2])
        bad = (lab >= num_classes) & (lab != IGNORE)
        if bad.any():
            raise ValueError(f"{name}: {i}.png has labels >= num_classes={num_classes}: {np.unique(lab[bad])}")
        labels.append(lab)
        edges.append(edges_from(np.where(lab == IGNORE, -1, lab)))
    return MultiTaskData(_normalise(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)),
                         {"seg": torch.from_numpy(np.stack(labels)),
                          "edge": torch.from_numpy(np.stack(edges)).float()[:, None]},
                         {"seg": TaskSpec("seg", "seg", num_classes), "edge": TaskSpec("edge", "edge", 1)})


CIFAR_LAYOUT = """  <root>/cifar-100-python/train, test, meta   the python pickles of CIFAR-100
  (or <root> itself is the cifar-100-python directory)"""


def cifar100_mtl(root, split="train"):
    """CIFAR100-MTL: 20 five-way tasks. Task ``c<k>`` = coarse class k; its classes are k's 5 fine classes.

    Each image belongs to one task: its target there is the rank of its fine label among the coarse class's
    fine labels (sorted), and ``IGNORE_CLS`` in every other task.
    """
    name = "CIFAR100-MTL"
    base = os.path.join(root, "cifar-100-python") if root and os.path.isdir(os.path.join(root, "cifar-100-python")) \
        else root
    _require_dir(base, name, CIFAR_LAYOUT)
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-100 splits are train and test, got {split!r}")
    path = os.path.join(base, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: {path} is missing. Expected layout:\n{CIFAR_LAYOUT}")
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    fine, coarse = np.asarray(d[b"fine_labels"]), np.asarray(d[b"coarse_labels"])
    if data.ndim != 2 or data.shape[1] != 3072 or len(fine) != len(data) or len(coarse) != len(data):
        raise ValueError(f"{path}: expected data [N, 3072] with N fine and coarse labels")
    # the coarse -> fine grouping comes from the train file, so train and test agree
    with open(os.path.join(base, "train"), "rb") as f:
        tr = pickle.load(f, encoding="bytes")
    groups = {}
    for c, fl in zip(tr[b"coarse_labels"], tr[b"fine_labels"]):
        groups.setdefault(int(c), set()).add(int(fl))
    if sorted(groups) != list(range(20)) or any(len(g) != 5 for g in groups.values()):
        raise ValueError(f"{name}: expected 20 coarse classes with 5 fine classes each in the train file")
    rank = {f: sorted(g).index(f) for g in groups.values() for f in g}
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    targets, tasks = {}, {}
    for k in range(20):
        t = np.full(len(data), IGNORE_CLS, dtype=np.int64)
        sel = coarse == k
        t[sel] = [rank[int(f)] for f in fine[sel]]
        targets[f"c{k}"] = torch.from_numpy(t)
        tasks[f"c{k}"] = TaskSpec(f"c{k}", "cls", 5)
    return MultiTaskData(_normalise(images), targets, tasks)


def load_dataset(name, split="train", root=None, n=None, size=None, seed=0):
    """Dataset by name: ``scenes`` (embedded), ``nyud``, ``pascal_context``, ``cifar100_mtl``."""
    if name == "scenes":
        default_n = {"train": 2000, "val": 500, "test": 500}
        if split not in default_n:
            raise ValueError(f"scenes splits are {sorted(default_n)}, got {split!r}")
        # disjoint generator streams per split
        return synthetic_scenes(n or default_n[split], size=size or 32, seed=seed * 3 + ("train", "val", "test").index(split))
    hw = (size, size) if isinstance(size, int) else size
    if name == "nyud":
        return nyud(root, split, hw)
    if name == "pascal_context":
        return pascal_context(root, split, hw)
    if name == "cifar100_mtl":
        return cifar100_mtl(root, "test" if split == "val" else split)
    raise ValueError(f"unknown dataset {name!r}; choose scenes, nyud, pascal_context or cifar100_mtl")
