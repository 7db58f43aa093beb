"""Task losses, task metrics, relative performance and controllability metrics.

Task metrics (each task's usual convention):
  seg      mIoU over classes that occur in the prediction or the target (void = 255 ignored)     higher better
  depth    RMSE over valid pixels (target > 0)                                                  lower better
  normals  mean angle error in degrees over valid pixels (target norm > 0)                      lower better
  edge     F-score: max over thresholds 0.1, 0.2, ..., 0.9 of the pixelwise F1 of sigmoid(logit) >= t
           against the boundary map, counts pooled over the dataset (ODS without matching tolerance) higher better
  cls      accuracy over samples of this task (targets != -100)                                  higher better

Relative performance of a task against a reference (the full-width model) follows the Δm convention:
``rel = 1 + s·(M - M_ref)/M_ref`` with s = +1 if higher is better and -1 otherwise, so 1.0 = as good as the
reference and > 1 = better.

Controllability:
  * ``dymu(prefs, losses)`` = 1 - KL(q ‖ uniform) with q = p⊙L / Σ p⊙L (preference-weighted task losses,
    normalised); 1.0 when the weighted losses are balanced.
  * ``hypervolume(points, ref)``: exact volume dominated by ``points`` (maximisation) above ``ref``, by slicing
    along the last objective (exact in any dimension, O(n^d) for n points in d objectives; fine for small d).
  * ``spearman(a, b)``: Pearson correlation of average ranks (ties share the mean rank); 0.0 if either side
    is constant (no ordering to agree with).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import IGNORE, IGNORE_CLS

HIGHER_IS_BETTER = {"seg": True, "depth": False, "normals": False, "edge": True, "cls": True}
METRIC_NAME = {"seg": "mIoU", "depth": "RMSE", "normals": "angle_err_deg", "edge": "F", "cls": "accuracy"}
EDGE_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def task_loss(kind, pred, target):
    """Training loss of one task (mean over valid elements; 0 with a gradient path if none is valid)."""
    if kind == "seg":
        valid = target != IGNORE
        if not valid.any():
            return pred.sum() * 0.0
        return F.cross_entropy(pred, target, ignore_index=IGNORE)
    if kind == "cls":
        if not (target != IGNORE_CLS).any():
            return pred.sum() * 0.0
        return F.cross_entropy(pred, target, ignore_index=IGNORE_CLS)
    if kind == "depth":
        valid = target > 0
        return (pred - target).abs()[valid].mean() if valid.any() else pred.sum() * 0.0
    if kind == "normals":
        valid = target.norm(dim=1) > 0
        cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6)
        return (1.0 - cos)[valid].mean() if valid.any() else pred.sum() * 0.0
    if kind == "edge":
        return F.binary_cross_entropy_with_logits(pred, target)
    raise ValueError(f"unknown task kind {kind!r}")


class TaskMeter:
    """Accumulates one task's metric over batches: ``update(pred, target)``, then ``value()``."""

    def __init__(self, kind, channels):
        if kind not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown task kind {kind!r}")
        self.kind, self.channels = kind, channels
        self.higher_is_better = HIGHER_IS_BETTER[kind]
        self.loss_sum, self.batches = 0.0, 0
        if kind == "seg":
            self.conf = torch.zeros(channels, channels, dtype=torch.int64)
        elif kind == "edge":
            self.counts = torch.zeros(len(EDGE_THRESHOLDS), 3, dtype=torch.float64)  # tp, fp, fn
        else:
            self.sum, self.n = 0.0, 0

    @torch.no_grad()
    def update(self, pred, target):
        self.loss_sum += float(task_loss(self.kind, pred, target))
        self.batches += 1
        if self.kind == "seg":
            valid = target != IGNORE
            p, t = pred.argmax(1)[valid], target[valid]
            self.conf += torch.bincount(t * self.channels + p, minlength=self.channels ** 2).view(
                self.channels, self.channels).cpu()
        elif self.kind == "cls":
            valid = target != IGNORE_CLS
            self.sum += int((pred.argmax(-1)[valid] == target[valid]).sum())
            self.n += int(valid.sum())
        elif self.kind == "depth":
            valid = target > 0
            self.sum += float(((pred - target)[valid].double() ** 2).sum())
            self.n += int(valid.sum())
        elif self.kind == "normals":
            valid = target.norm(dim=1) > 0
            cos = F.cosine_similarity(pred.double(), target.double(), dim=1, eps=1e-12).clamp(-1, 1)
            self.sum += float(torch.rad2deg(torch.acos(cos))[valid].sum())
            self.n += int(valid.sum())
        else:
            prob, gt = torch.sigmoid(pred).flatten(), target.flatten() > 0.5
            for i, th in enumerate(EDGE_THRESHOLDS):
                hit = prob >= th
                self.counts[i] += torch.tensor([float((hit & gt).sum()), float((hit & ~gt).sum()),
                                                float((~hit & gt).sum())], dtype=torch.float64)

    def value(self):
        """The task metric (see module docstring); NaN if nothing valid was seen."""
        if self.kind == "seg":
            tp = self.conf.diag().double()
            union = self.conf.sum(0).double() + self.conf.sum(1).double() - tp
            present = union > 0
            return float((tp[present] / union[present]).mean()) if present.any() else math.nan
        if self.kind == "edge":
            tp, fp, fn = self.counts.unbind(1)
            f = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1e-12), torch.zeros_like(tp))
            return float(f.max())
        if self.n == 0:
            return math.nan
        if self.kind == "depth":
            return math.sqrt(self.sum / self.n)
        return self.sum / self.n

    def loss(self):
        return self.loss_sum / max(self.batches, 1)


def relative(metric, ref, higher_is_better):
    """Relative performance vs a reference (Δm convention, 1.0 = equal to the reference)."""
    if ref == 0 or not math.isfinite(ref):
        raise ValueError(f"reference metric must be finite and nonzero, got {ref}")
    d = (metric - ref) / ref
    return 1.0 + d if higher_is_better else 1.0 - d


def dymu(prefs, losses):
    """DYMU uniformity 1 - KL(q ‖ u), q = normalised preference-weighted losses, u uniform over tasks."""
    p, L = np.asarray(prefs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if p.shape != L.shape or p.ndim != 1 or len(p) < 1:
        raise ValueError(f"prefs and losses must be 1-D of equal length, got {p.shape}, {L.shape}")
    if (p < 0).any() or (L < 0).any() or not np.isfinite(p).all() or not np.isfinite(L).all():
        raise ValueError("prefs and losses must be finite and non-negative")
    v = p * L
    if v.sum() <= 0:
        raise ValueError("preference-weighted losses sum to zero")
    q = v / v.sum()
    nz = q > 0
    return float(1.0 - np.sum(q[nz] * np.log(q[nz] * len(q))))


def hypervolume(points, ref):
    """Exact hypervolume (maximisation) of ``points`` [n, d] above reference point ``ref`` [d]."""
    P = np.asarray(points, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if P.size == 0:
        return 0.0
    if P.ndim != 2 or r.shape != (P.shape[1],):
        raise ValueError(f"points must be [n, d] and ref [d], got {P.shape}, {r.shape}")
    P = P[(P > r).all(axis=1)]
    return float(_hv(P, r)) if len(P) else 0.0


def _hv(P, r):
    if P.shape[1] == 1:
        return P[:, 0].max() - r[0]
    order = np.argsort(-P[:, -1], kind="stable")
    P = P[order]
    total = 0.0
    for i in range(len(P)):
        lower = P[i + 1, -1] if i + 1 < len(P) else r[-1]
        h = P[i, -1] - lower
        if h > 0:
            total += h * _hv(P[: i + 1, :-1], r[:-1])
    return total


def _ranks(x):
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b):
    """Spearman rank correlation (average ranks for ties); 0.0 when either input is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two 1-D sequences of equal length >= 2, got {a.shape}, {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 0.0
