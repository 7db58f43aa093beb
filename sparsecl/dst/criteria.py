"""Pruning and growth scores and the drop-fraction schedule.

Scores are dense [out, in]-shaped (the layer's effective weight shape); prune_regrow drops the
smallest prune scores and grows the largest grow scores (block layers: summed |score| per block).
"""
import math

import torch

from ..ops import random_scores

PRUNE = ("magnitude", "set", "taylor")
GROWTH = ("random", "unfired", "gradient", "momentum")
DECAY = ("constant", "cosine", "linear")


def drop_fraction_at(step, drop_fraction, decay, final_drop_fraction, end_step):
    """Fraction of active weights to swap at ``step``: constant, or decayed from ``drop_fraction`` at step 0
    to ``final_drop_fraction`` at ``end_step`` (cosine: f + (f0 - f) (1 + cos(pi t / T)) / 2; linear)."""
    if decay == "constant":
        return float(drop_fraction)
    t = min(max(step / end_step, 0.0), 1.0)
    if decay == "cosine":
        return final_drop_fraction + (drop_fraction - final_drop_fraction) * 0.5 * (1.0 + math.cos(math.pi * t))
    return drop_fraction + (final_drop_fraction - drop_fraction) * t


def magnitude_score(w):
    return w.abs()


def set_score(w, mask):
    """SET: positive and negative weights are pruned separately, in proportion to their counts. The score is
    each active weight's rank (by |w|, ascending) within its sign group divided by the group's size, so the
    n smallest scores take ~n * (group share) from each group, the weakest of each first."""
    flat, m = w.detach().flatten(), mask.flatten()
    score = torch.zeros_like(flat, dtype=torch.float64)
    for group in (m & (flat > 0), m & (flat <= 0)):
        idx = group.nonzero().view(-1)
        if idx.numel():
            order = torch.sort(flat[idx].abs().double(), stable=True).indices
            score[idx[order]] = torch.arange(1, idx.numel() + 1, dtype=torch.float64, device=w.device) / idx.numel()
    return score.view(w.shape)


def taylor_score(w, grad):
    return (w * grad).abs()


def random_score(shape, seed, device):
    """U[0, 1) per position from a counter-based hash of (seed, index): the same on every rank and device."""
    return random_scores(shape, seed, device)


def unfired_score(ever_active, seed):
    """Positions never active before score in [1, 1.5), the others in [0, 0.5): random within each."""
    r = random_scores(ever_active.shape, seed, ever_active.device).mul_(0.5)
    return r.add_(~ever_active)
