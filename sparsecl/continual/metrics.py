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


# what trunk_state_bytes reports, in the order a storage shared by two parts is attributed
STATE_PARTS = ("weights", "optimizer", "gradients", "owner", "index", "masks", "derived", "guard", "dst")


def _tensors_in(obj):
    """The tensors inside nested dicts / lists / tuples (not inside other objects)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v)


def _layer_parts(layer, parts):
    """Sort what one trunk layer keeps between steps into ``parts`` (see ``trunk_state_bytes``)."""
    for p in layer.parameters():
        parts["weights"].append(p)
        parts["gradients"].append(p.grad)
    for name, b in layer.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        parts["weights" if leaf == "frozen_values" else "owner" if leaf == "frozen_owner" else "index"].append(b)
    parts["owner"].append(getattr(layer, "_owned", None))  # dense-masked, reuse: mask: the owner index, shared
    union = getattr(layer, "_union", None)
    if union is not None:
        parts["derived"] += union.tensors()
    for m in layer.modules():
        # a DST repack's src, kept until the next pass updates the union with it
        parts["derived"] += list(_tensors_in(getattr(m, "last_repack", None)))
        # sparsecl.dispatch: the dense weight of a layer that runs a pass densely
        dispatcher = m.__dict__.get("_dispatcher")
        dense = getattr(dispatcher, "dense", None)
        if dense is not None:
            parts["derived"].append(dense.buffer)
            # each part's positions, and the index tensors it was scattered from (kept alive by it)
            parts["derived"] += list(_tensors_in([(st.positions, tuple(st.index)) for st in dense._parts
                                                  if st is not None]))


def trunk_state_bytes(layers, optimizer=None, ownership=None, task_masks=(), guard=None, dst=None):
    """Bytes of everything the trunk layers and the trainer keep for them between steps, by part (a storage
    shared by two parts counts once, in the first of ``STATE_PARTS``):

      weights    trainable parameters and frozen values
      optimizer  optimizer state of the trunk parameters
      gradients  the trunk parameters' ``.grad`` (kept from one backward to the next step's zero_grad)
      owner      ownership: dense uint8 indices, or the frozen stores' owner byte per entry
      index      the frozen stores' and trainable parts' CSR indices; dense-masked layers' bool masks
      masks      the per-task masks (``task_masks``, reuse: mask)
      derived    what is rebuilt from the above: each union cache (index, positions, value buffer holding the
                 reused frozen values), each dense weight ``sparsecl.dispatch`` keeps for a dense pass
      guard      ``FrozenGuard``'s index of the frozen entries of dense-masked layers
      dst        the DST engine's tensors (e.g. its ever-active mask per layer)
      total      the sum
    """
    parts = {k: [] for k in STATE_PARTS}
    for layer in layers:
        _layer_parts(layer, parts)
    if optimizer is not None:
        ids = {id(p) for l in layers for p in l.parameters()}
        parts["optimizer"] += [v for p, st in optimizer.state.items() if id(p) in ids for v in _tensors_in(st)
                               if v.dim() > 0]
    if ownership is not None:
        parts["owner"] += [d for d in ownership._dense if d is not None]
    parts["masks"] += list(_tensors_in(task_masks))
    if guard is not None:
        parts["guard"] += guard.index
    if dst is not None:
        parts["dst"] += [t for v in vars(dst).values() for t in _tensors_in(v)]
    seen, out = set(), {}
    for k in STATE_PARTS:
        out[k] = 0
        for t in parts[k]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                if t.untyped_storage().nbytes():
                    seen.add(t.untyped_storage().data_ptr())
                out[k] += t.untyped_storage().nbytes()
    out["total"] = sum(out[k] for k in STATE_PARTS)
    return out
