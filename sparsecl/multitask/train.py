"""Training the controllable multi-task SuperNet: sandwich-rule SubNets plus configuration-invariant KD.

Each step draws one batch and accumulates gradients over these width configurations (sandwich rule):
  * the SuperNet (every width 1.0),
  * the smallest SubNet (every width = the grid's minimum),
  * ``n_random`` SubNets whose encoder width and each decoder width are drawn independently and uniformly
    from the grid,
then takes one optimizer step. The loss is

    L = Σ_t w_t·ℓ_t(SuperNet) + Σ_{s ∈ SubNets} [ Σ_t w_t·ℓ_t(s) + λ·KD(s) ]

    KD(s) = mean_{b,c,px}( F_s - sg(F_1.0)[:, :c_s] )² / ( mean_{b,c,px}( sg(F_1.0)[:, :c_s] )² + 1e-6 )

with ℓ_t the task loss (``metrics.task_loss``), w_t the task weights, F_s the encoder output of SubNet s
(c_s = channels(c_enc, e_s) channels, the decoders' input), F_1.0 the SuperNet's encoder output from the same
batch, and sg = stop-gradient (the teacher is detached: KD moves only the SubNet's path, never the SuperNet).
A SubNet with encoder width 1.0 has KD = 0 (it is the teacher's own encoder). The numerator is the paper's
feature-matching MSE; the denominator (detached, so it only rescales the gradient) makes KD a relative squared
error, independent of the feature scale that the encoder's BN affine parameters drift to, so one λ means the
same thing at every step, width and dataset. λ (``kd_weight``) is chosen on the validation split.

Channel alignment: the first c_s teacher channels. A slimmable layer at width e computes exactly the first c_s
output filters of the full layer (W[:c_s]), so SubNet channel j and SuperNet channel j come from the same
filter and the same decoder input weights; they are already index-aligned. Comparing them directly asks the
shared filters to mean the same thing at every width, which is the point of configuration invariance. A learned
per-width 1x1 projection would instead let the SubNet's features differ from the teacher's by a linear map
that the decoders (shared across encoder widths) never see at deployment, and it adds parameters.

Switchable BN keeps statistics per width; running statistics gathered during sandwich training mix
configurations, so after training ``sparsecl.nn.recalibrate_bn`` recomputes them (``recalibrate``).
"""
import math
import random
import time

import torch

from .. import nn as snn
from .metrics import task_loss

DEFAULTS = {
    "dataset": "scenes", "root": None, "size": 24, "n_train": 2000, "n_val": 400, "n_test": 400,
    # decoder width, width grid, steps, lr and kd_weight as in the committed experiment (kd_weight 0.1 was
    # chosen on the validation split; bench/multitask_scenes.yaml)
    "enc_channels": [8, 16, 32], "dec_channels": 24, "widths": [0.2, 0.4, 0.6, 0.8, 1.0],
    "steps": 450, "batch_size": 24, "lr": 3e-3, "weight_decay": 1e-4, "n_random": 2,
    "kd_weight": 0.1, "task_weights": None, "seed": 0, "threads": 1,
    "recal_batches": 8, "eval_batch": 100,
    "n_queries": 1000, "budget_levels": [0.15, 0.3, 0.45, 0.6, 0.75, 0.9], "prefs_per_budget": 40,
    "latency_reps": 5,
}


def kd_loss(student, teacher):
    """CI-KD: squared error between SubNet features [B, c_s, h, w] and the first c_s channels of the detached
    SuperNet features [B, C, h, w], relative to the teacher's mean square (module docstring)."""
    c = student.shape[1]
    if c > teacher.shape[1] or student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"student features {tuple(student.shape)} do not fit teacher {tuple(teacher.shape)}")
    t = teacher[:, :c].detach()
    return torch.mean((student - t) ** 2) / (torch.mean(t ** 2) + 1e-6)


def sample_configs(model, n_random, rng):
    """Sandwich rule: [SuperNet, smallest SubNet, n_random random SubNets]."""
    G = model.widths
    cfgs = [model.full_config(), model.config(G[0])]
    for _ in range(n_random):
        cfgs.append(model.config(rng.choice(G), {t: rng.choice(G) for t in model.tasks}))
    return cfgs


def _task_losses(model, outs, targets, weights):
    return sum(weights[t] * task_loss(model.tasks[t].kind, outs[t], targets[t]) for t in model.tasks)


def train_step(model, optimizer, images, targets, cfgs, kd_weight, weights):
    """One optimizer step over ``cfgs`` (the first must be the SuperNet). Returns a dict of float losses."""
    optimizer.zero_grad(set_to_none=True)
    with model.using(cfgs[0]):
        feats, outs = model(images)
        loss = _task_losses(model, outs, targets, weights)
    loss.backward()
    teacher = feats.detach()
    stats = {"super": loss.item(), "sub": 0.0, "kd": 0.0}
    for cfg in cfgs[1:]:
        with model.using(cfg):
            f, outs = model(images)
            sub = _task_losses(model, outs, targets, weights)
            kd = kd_loss(f, teacher) if kd_weight > 0 else f.new_zeros(())
            (sub + kd_weight * kd).backward()
        stats["sub"] += sub.item() / (len(cfgs) - 1)
        stats["kd"] += kd.item() / (len(cfgs) - 1)
    optimizer.step()
    return stats


def train(model, data, cfg, progress=True):
    """Train ``model`` on ``data`` (MultiTaskData) with config dict ``cfg``; recalibrates BN at the end.

    Returns a history dict (per-step losses every 10 steps, wall time).
    """
    from tqdm import tqdm

    cfg = {**DEFAULTS, **cfg}
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    rng = random.Random(int(cfg["seed"]))
    weights = cfg["task_weights"] or {t: 1.0 for t in model.tasks}
    if set(weights) != set(model.tasks):
        raise ValueError(f"task_weights must name exactly the tasks {list(model.tasks)}")
    steps, bs = int(cfg["steps"]), int(cfg["batch_size"])
    if steps < 1 or bs < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {bs}")
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    history = {"step": [], "super": [], "sub": [], "kd": []}
    t0 = time.perf_counter()
    n = len(data)
    bar = tqdm(range(steps), disable=not progress, desc="train", leave=False)
    for step in bar:
        idx = torch.randint(0, n, (min(bs, n),), generator=gen)
        images, targets = data.batch(idx)
        stats = train_step(model, opt, images, targets, sample_configs(model, int(cfg["n_random"]), rng),
                           float(cfg["kd_weight"]), weights)
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            history["step"].append(step)
            for k in ("super", "sub", "kd"):
                history[k].append(stats[k])
            bar.set_postfix(super=f"{stats['super']:.3f}", sub=f"{stats['sub']:.3f}", kd=f"{stats['kd']:.4f}")
    history["train_s"] = time.perf_counter() - t0
    recalibrate(model, data, int(cfg["recal_batches"]), bs, gen)
    history["total_s"] = time.perf_counter() - t0
    return history


def recalibrate(model, data, n_batches, batch_size, gen=None):
    """Recompute switchable-BN statistics from ``n_batches`` training batches.

    One ``recalibrate_bn`` pass per decoder width d; within it every batch runs through the encoder at every
    grid width, so each (encoder width, decoder width) decoder BN and each encoder-width BN sees exactly the
    features it normalises at deployment.
    """
    batches = [data.batch(torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen))[0]
               for _ in range(max(1, n_batches))]

    def every_encoder_width(mdl, x):
        for e in mdl.widths:
            with mdl.encoder_width(e):
                mdl(x)

    snn.recalibrate_bn(model, batches, [model.width_map(model.config(1.0, d)) for d in model.widths],
                       forward=every_encoder_width)
    model.eval()
