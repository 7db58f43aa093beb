"""Fused prune-regrow (design.md §3): one in-place topology update over a list of layers.

Per layer, with A = mask and E = eligible (default all True): drop D = the n positions of A ∩ E with
the smallest prune score; grow G = the n positions of E \\ (A \\ D) with the largest grow score (a
dropped position may regrow). Ties go to the lower flat index; NaN is the smallest prune score
(dropped first) and the smallest grow score (grown last). n is clipped to |A ∩ E|, for both sets, so
nnz is preserved exactly. New mask (A \\ D) ∪ G; weights at G \\ A and D \\ G become 0, all others stay
bit-identical. Block granularity: a mask shaped like the block grid (ceil(out/B), ceil(in/B)) of a
2-D weight (B the power of two that fits) selects whole B x B blocks.
"""
import math

import torch

from ..formats import block_reduce
from ._registry import register_reference

OP = "prune_regrow"


def block_size_of(weight_shape, mask_shape):
    """1 for element granularity, else the power-of-two B whose block grid of weight_shape is mask_shape."""
    weight_shape, mask_shape = tuple(weight_shape), tuple(mask_shape)
    if weight_shape == mask_shape:
        return 1
    if len(weight_shape) == 2 and len(mask_shape) == 2:
        B = 2
        while B <= 2 * max(1, *weight_shape):
            if (math.ceil(weight_shape[0] / B), math.ceil(weight_shape[1] / B)) == mask_shape:
                return B
            B *= 2
    raise ValueError(f"mask shape {mask_shape} is neither the weight shape {weight_shape} nor its block grid "
                     "(ceil(out/B), ceil(in/B)) for a power-of-two B")


# Pure-torch reference (the fallback without the extension, and the benchmark baseline) ----------
def drop_order(score):
    """Flat indices in drop order: NaN first, then ascending score, ties by lower index."""
    v = score.detach().flatten().double() + 0.0  # + 0.0 turns -0.0 into +0.0
    nan = torch.isnan(v)
    order = torch.sort(torch.where(nan, float("-inf"), v), stable=True).indices
    return order[torch.sort((~nan[order]).to(torch.uint8), stable=True).indices]


def grow_order(score):
    """Flat indices in grow order: descending score, ties by lower index, NaN last."""
    v = score.detach().flatten().double() + 0.0
    nan = torch.isnan(v)
    order = torch.sort(torch.where(nan, float("-inf"), v), descending=True, stable=True).indices
    return order[torch.sort(nan[order].to(torch.uint8), stable=True).indices]


def _asc_key32(score):
    """Order-preserving int64 keys in [0, 2**32) of float32-exact scores; NaN -> 0, -0.0 and +0.0 equal."""
    v = score.detach().flatten().float() + 0.0
    u = v.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    key = torch.where(u >= 2 ** 31, 0xFFFFFFFF - u, u + 2 ** 31)
    return key.masked_fill_(torch.isnan(v), 0)


def _smallest(rank, cand, n):
    """Indices of the n smallest (unique) ranks among the candidates, via torch.topk."""
    rank = rank.masked_fill(~cand, torch.iinfo(torch.int64).max)
    return torch.topk(rank, n, largest=False, sorted=False).indices


def _select(p, g, A, E, n):
    """(D, G) as flat indices. float32-exact scores: unique int64 ranks (key * 2**31 + index) and
    torch.topk; float64 scores: stable sorts in drop/grow order."""
    exact32 = p.dtype != torch.float64 and g.dtype != torch.float64 and A.numel() < 2 ** 31
    if exact32:
        idx = torch.arange(A.numel(), device=A.device)
        D = _smallest(_asc_key32(p) * 2 ** 31 + idx, A & E, n)
    else:
        d_order = drop_order(p)
        D = d_order[(A & E)[d_order]][:n]
    cand = E & ~A
    cand[D] = True
    if exact32:
        G = _smallest((0xFFFFFFFF - _asc_key32(g)) * 2 ** 31 + idx, cand, n)
    else:
        g_order = grow_order(g)
        G = g_order[cand[g_order]][:n]
    return D, G


def _expand_blocks(grid, shape, B):
    return grid.repeat_interleave(B, 0).repeat_interleave(B, 1)[: shape[0], : shape[1]]


def _reference_prune_regrow(weights, masks, prune_scores, grow_scores, counts, eligible):
    changed = []
    for l, (w, m, p, g) in enumerate(zip(weights, masks, prune_scores, grow_scores)):
        A = m.flatten().clone()
        E = eligible[l].flatten() if len(eligible) else torch.ones_like(A)
        n = min(int(counts[l]), int((A & E).sum()))
        D, G = _select(p, g, A, E, n)
        in_d, in_g = torch.zeros_like(A), torch.zeros_like(A)
        in_d[D] = True
        in_g[G] = True
        zero = (in_g & ~A) | (in_d & ~in_g)
        m.copy_(((A & ~in_d) | in_g).view(m.shape))
        zero = zero.view(m.shape)
        if w.numel() or w.shape == m.shape:  # else a mask-only layer
            B = block_size_of(w.shape, m.shape)
            w.masked_fill_(zero if B == 1 else _expand_blocks(zero, w.shape, B), 0)
        changed.append(int(zero.sum()))
    return torch.tensor(changed, dtype=torch.int64, device=counts.device)


def reference_prune_regrow(weights, masks, prune_scores, grow_scores, counts, eligible=None):
    """The plain-torch implementation (torch.topk on unique integer ranks per layer + scatter; stable sorts
    for float64 scores); same contract as prune_regrow."""
    counts = torch.as_tensor(counts, dtype=torch.int64)
    return _reference_prune_regrow(weights, masks, prune_scores, grow_scores, counts, eligible or []).tolist()


register_reference(OP, _reference_prune_regrow)


# Random growth scores --------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _mul32(h, c):
    """(h * c) mod 2**32 for int64 tensors h in [0, 2**32) and a 32-bit constant, without int64 overflow."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _splitmix64(x):
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def _random_scores_torch(out, seed):
    """random_scores_ in torch ops (any device; the CUDA kernel, and the reference of the C++ one)."""
    torch._check(out.dtype == torch.float32, lambda: f"out must be float32, got {out.dtype}")
    torch._check(out.is_contiguous(), lambda: "out must be contiguous")
    k = _splitmix64(seed % (1 << 64))
    idx = torch.arange(out.numel(), dtype=torch.int64, device=out.device)
    h = _fmix32(_fmix32((idx & _M32) ^ (k & _M32)) ^ _mul32(idx >> 32, 0x9E3779B9) ^ (k >> 32))
    out.view(-1).copy_((h >> 8).to(torch.float32) * 2.0 ** -24)


# an elementwise hash is memory-bound: the torch formulation is the CUDA kernel (the one the CPU tests check)
register_reference("random_scores_", _random_scores_torch, cuda_kernel=True)


def random_scores(shape, seed, device=None):
    """float32 tensor of ``shape`` with U[0, 1) scores (24-bit) hashed from (seed, flat index): reproducible
    for a seed on any device, thread count or rank, and far cheaper than torch.rand on CPU. For random growth."""
    out = torch.empty(shape, dtype=torch.float32, device=device)
    torch.ops.sparsecl.random_scores_(out, int(seed))
    return out


def _as_list(x, name):
    if isinstance(x, torch.Tensor) or not isinstance(x, (list, tuple)):
        raise ValueError(f"{name} must be a list of tensors, one per layer, got {type(x).__name__}")
    return list(x)


def _score(s, w, m, B, name, l):
    if not isinstance(s, torch.Tensor):
        raise ValueError(f"{name}[{l}] must be a tensor, got {type(s).__name__}")
    if B > 1 and tuple(s.shape) == tuple(w.shape):
        s = block_reduce(s.detach().double() if not s.is_floating_point() else s.detach(), B, "abs_sum")
    if tuple(s.shape) != tuple(m.shape):
        raise ValueError(f"{name}[{l}] has shape {tuple(s.shape)}; expected the mask shape {tuple(m.shape)}"
                         + (f" or the weight shape {tuple(w.shape)}" if B > 1 else ""))
    if not s.is_floating_point():
        s = s.double()
    if s.device != m.device:
        raise ValueError(f"{name}[{l}] is on {s.device} but the mask is on {m.device}")
    return s.detach()


def prune_regrow(weights, masks, prune_scores, grow_scores, counts, eligible=None):
    """Drop and regrow ``counts[l]`` positions per layer, in place; returns the changed positions per layer.

    weights: list of float tensors (mutated), or None for a mask-only layer (values stored elsewhere, e.g. the
    compact storage a sparse layer repacks itself); masks: list of bool tensors of the weight's shape, or of
    its block grid (mutated); prune_scores/grow_scores: per mask position, or per weight element for block
    masks (reduced by sum of |.| over each block); counts: ints >= 0 (list or int64 tensor);
    eligible: None (all eligible) or a list of bool tensors of the mask shapes.
    Returns list[int]: |D \\ G| + |G \\ A| per layer.
    """
    weights, masks = _as_list(weights, "weights"), _as_list(masks, "masks")
    prune_scores, grow_scores = _as_list(prune_scores, "prune_scores"), _as_list(grow_scores, "grow_scores")
    L = len(weights)
    if not (len(masks) == len(prune_scores) == len(grow_scores) == L):
        raise ValueError(f"weights, masks, prune_scores, grow_scores need one entry per layer, got {L}, "
                         f"{len(masks)}, {len(prune_scores)}, {len(grow_scores)}")
    if not isinstance(counts, torch.Tensor):
        counts = list(counts) if isinstance(counts, (list, tuple)) else [counts]
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise ValueError(f"counts must hold {L} integers, got {counts}")
        counts = torch.tensor(counts, dtype=torch.int64)
    counts = counts.flatten()
    if counts.dtype.is_floating_point or counts.dtype == torch.bool or counts.numel() != L:
        raise ValueError(f"counts must hold {L} integers, got {counts.dtype} with {counts.numel()} entries")
    counts = counts.to("cpu", torch.int64)
    if L and int(counts.min()) < 0:
        raise ValueError(f"counts must be >= 0, got {counts.tolist()}")
    eligible = [] if eligible is None else _as_list(eligible, "eligible")
    if eligible and len(eligible) != L:
        raise ValueError(f"eligible needs one entry per layer ({L}), got {len(eligible)}")
    ps, gs = [], []
    w_dtype = next((w.dtype for w in weights if isinstance(w, torch.Tensor)), torch.float32)
    for l, (w, m) in enumerate(zip(weights, masks)):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(f"masks[{l}] must be a bool tensor, got {getattr(m, 'dtype', type(m).__name__)}")
        if w is None:  # mask only: the CPU kernel skips weight writes for an empty weight; CUDA gets scratch
            w = weights[l] = torch.empty(0 if m.device.type == "cpu" else m.shape, device=m.device, dtype=w_dtype)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise ValueError(f"weights[{l}] must be a floating-point tensor or None")
        if m.device != w.device:
            raise ValueError(f"masks[{l}] is on {m.device} but weights[{l}] is on {w.device}")
        B = 1 if w.numel() == 0 else block_size_of(w.shape, m.shape)
        ps.append(_score(prune_scores[l], w, m, B, "prune_scores", l))
        gs.append(_score(grow_scores[l], w, m, B, "grow_scores", l))
        if eligible:
            e = eligible[l]
            if not isinstance(e, torch.Tensor) or e.dtype != torch.bool or tuple(e.shape) != tuple(m.shape):
                raise ValueError(f"eligible[{l}] must be a bool tensor of the mask shape {tuple(m.shape)}")
            if e.device != m.device:
                raise ValueError(f"eligible[{l}] is on {e.device} but the mask is on {m.device}")
    if L:
        dtypes = {s.dtype for s in ps + gs}
        if len(dtypes) > 1:
            common = torch.float64 if torch.float64 in dtypes else torch.float32
            ps, gs = [s.to(common) for s in ps], [s.to(common) for s in gs]
        if ps[0].dtype in (torch.float16, torch.bfloat16) and ps[0].device.type == "cpu":
            ps, gs = [s.float() for s in ps], [s.float() for s in gs]  # exact widening
    with torch.no_grad():
        out = torch.ops.sparsecl.prune_regrow(weights, masks, ps, gs, counts, eligible)
    return out.tolist()
