"""Continual-learning metrics over the accuracy matrix, and resource accounting.

``acc[i][j]`` is the test accuracy on task j after training task i (rows: after task i, columns: task j).
With T tasks (GEM, Lopez-Paz & Ranzato 2017; forgetting as in Chaudhry et al. 2018):
  ACC        = mean_j acc[T-1][j]
  BWT        = mean_{j<T-1} (acc[T-1][j] - acc[j][j])
  FWT        = mean_{j>0} (acc[j-1][j] - b[j]), where b[j] is the accuracy on task j of the randomly
               initialised model before any training (``baseline`` row, measured by the trainer).
               In the multi-head setting the head of task j is untrained before task j, so FWT ~ 0.
  forgetting = mean_{j<T-1} (max_{j<=l<T-1} acc[l][j] - acc[T-1][j])  (only after task j was learnt)
"""
import resource
import sys

import torch


def _check(acc):
    T = len(acc)
    if T == 0 or any(len(r) != T for r in acc):
        raise ValueError(f"acc must be a non-empty square T x T matrix, got {[len(r) for r in acc]}")
    return T


def average_accuracy(acc):
    T = _check(acc)
    return sum(acc[T - 1]) / T


def backward_transfer(acc):
    T = _check(acc)
    return sum(acc[T - 1][j] - acc[j][j] for j in range(T - 1)) / (T - 1) if T > 1 else 0.0


def forward_transfer(acc, baseline):
    T = _check(acc)
    if len(baseline) != T:
        raise ValueError(f"baseline needs {T} entries, got {len(baseline)}")
    return sum(acc[j - 1][j] - baseline[j] for j in range(1, T)) / (T - 1) if T > 1 else 0.0


def forgetting(acc):
    T = _check(acc)
    if T == 1:
        return 0.0
    return sum(max(acc[l][j] for l in range(j, T - 1)) - acc[T - 1][j] for j in range(T - 1)) / (T - 1)


def summary(acc, baseline):
    """{ACC, BWT, FWT, forgetting} of a full T x T matrix."""
    return {"ACC": average_accuracy(acc), "BWT": backward_transfer(acc), "FWT": forward_transfer(acc, baseline),
            "forgetting": forgetting(acc)}


def peak_rss_bytes():
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def peak_device_bytes(device):
    device = torch.device(device)
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def tensor_bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def state_bytes(modules, optimizer=None):
    """Bytes held by parameters, buffers (indices, masks, owner index) and optimizer state of ``modules``.

    Returns {"params", "buffers", "optimizer"}; shared storages are counted once.
    """
    params = [p for m in modules for p in m.parameters()]
    buffers = [b for m in modules for b in m.buffers()]
    opt = []
    if optimizer is not None:
        ids = {id(p) for p in params}
        for p, st in optimizer.state.items():
            if id(p) in ids:
                opt += [v for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"params": tensor_bytes(params), "buffers": tensor_bytes(buffers), "optimizer": tensor_bytes(opt)}
