"""prune_regrow over a CIFAR ResNet-18 parameter set (11.2M weights), density 0.1, 30% of active swapped per layer.

Methods: the fused kernel (C++ CPU / CUDA), the exact plain-torch reference (torch.topk per layer and
set on unique integer ranks, then scatter: the fallback without the extension) and the peer-library
style (torch.topk on the float scores per layer and set, then scatter; its ties are not deterministic). Prune score |w|, grow score |g| of a random
gradient. Floors measured in the same run: one read of mask + both scores (9 bytes per weight in fp32:
a reduction over a tensor of that size) and one copy of mask + weight + both scores (13 bytes per weight).
"""
import torch

from sparsecl.ops import prune_regrow
from sparsecl.ops.prune_regrow import reference_prune_regrow

try:
    from .harness import measure
except ImportError:  # run by pytest from the bench/ folder
    from harness import measure


def resnet18_cifar_shapes(num_classes=10):
    """[out, in * kh * kw] of every conv and linear weight of a CIFAR ResNet-18 (3x3 stem)."""
    shapes = [(64, 3 * 9)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for b in range(2):
            shapes += [(c_out, c_in * 9), (c_out, c_out * 9)]
            if b == 0 and (stride != 1 or c_in != c_out):
                shapes.append((c_out, c_in))
            c_in = c_out
    return shapes + [(num_classes, 512)]


def make_case(device="cpu", density=0.1, swap=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws, ms, ps, gs, counts = [], [], [], [], []
    for shape in resnet18_cifar_shapes():
        m = torch.rand(shape, generator=g) < density
        w = torch.randn(shape, generator=g) * m
        ws.append(w.to(device))
        ms.append(m.to(device))
        ps.append(w.abs().to(device))
        gs.append(torch.randn(shape, generator=g).abs().to(device))
        counts.append(int(swap * int(m.sum())))
    return ws, ms, ps, gs, counts


def topk_style(weights, masks, prune_scores, grow_scores, counts):
    """Peer-library update: torch.topk per layer for each set, then scatter (no exact tie rule)."""
    for w, m, p, g, n in zip(weights, masks, prune_scores, grow_scores, counts):
        mf, wf = m.view(-1), w.view(-1)
        drop = torch.topk(torch.where(mf, p.view(-1), float("inf")), n, largest=False).indices
        mf[drop] = False
        grow = torch.topk(torch.where(mf, float("-inf"), g.view(-1)), n).indices
        new = grow[~mf[grow]]
        mf[grow] = True
        wf[new] = 0
        wf[~mf] = 0


def rows(quick=False, device="cpu"):
    ws, ms, ps, gs, counts = make_case(device)
    n_params = sum(w.numel() for w in ws)
    min_time = 0.5 if quick else 2.0
    big = torch.empty(n_params * 9 // 4, device=device).uniform_()
    t_read = measure(lambda: big.sum(), device, min_time)
    floor = t_read  # the same byte count as mask + both scores
    src = torch.empty(n_params * 13 // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    t_copy = measure(lambda: dst.copy_(src), device, min_time)
    del big, src, dst
    base = dict(op="prune_regrow", params=n_params, density=0.1, swap=0.3, layers=len(ws))
    methods = {
        "sparsecl fused": lambda: prune_regrow(ws, ms, ps, gs, counts),
        "reference (topk on int ranks, exact)": lambda: reference_prune_regrow(ws, ms, ps, gs, counts),
        "torch.topk per layer": lambda: topk_style(ws, ms, ps, gs, counts),
    }
    times = {k: measure(fn, device, min_time, min_runs=3, warmup=1) for k, fn in methods.items()}
    for k, t in times.items():
        yield dict(base, method=k, ms=t * 1e3, vs_reference=times["reference (topk on int ranks, exact)"] / t,
                   vs_topk=times["torch.topk per layer"] / t, floor_ms=floor * 1e3, x_floor=t / floor,
                   copy_floor_ms=t_copy * 1e3, x_copy=t / t_copy,
                   read_gbps=n_params * 9 / t_read / 1e9)


CASES = [dict(id="resnet18-d0.1-swap0.3")]


def test_prune_regrow_fused(benchmark):
    ws, ms, ps, gs, counts = make_case()
    benchmark(lambda: prune_regrow(ws, ms, ps, gs, counts))


if __name__ == "__main__":
    from harness import format_table

    print(format_table(list(rows()), ["method", "ms", "vs_reference", "vs_topk", "floor_ms", "x_floor", "copy_floor_ms", "x_copy",
                                      "read_gbps"]))
