"""Who owns which trunk position (``Ownership``) and the guard that keeps frozen entries of dense-masked layers
bit-identical through optimizer steps (``FrozenGuard``); see ``sparsecl.continual.trainer`` for the protocol."""
import torch

from ..formats import pack_bits, unpack_bits


class Ownership:
    """Which task froze each trunk position: 0 = free, t + 1 = frozen by task t (at most 255 tasks).

    A sparse trunk layer keeps it in its frozen store, one byte per frozen entry (``frozen_store.tag``); other
    layers (dense-masked, and depthwise convs in sparse mode) keep a dense uint8 index here, as a peer library
    does. ``index``/``free``/``view`` give dense per-position views, built on demand for store layers.
    Task masks (``encode``/``decode``): mask t as one bit per position owned by tasks 0..t (row-major order),
    which it is a subset of once task t is frozen; owners never change, so the encoding stays valid."""

    def __init__(self, layers):
        self.layers = layers  # the model's trunk layers (a ModuleList: read at each use)
        self._dense = [None if hasattr(l, "frozen_store") else
                       torch.zeros(l.dst_mask().shape, dtype=torch.uint8, device=l.dst_mask().device) for l in layers]

    def index(self, i):
        """uint8 owner of each position of layer i over its 2-D view: the live index of a dense layer (the trainer
        writes it at freeze), a new tensor built from a sparse layer's frozen store."""
        d = self._dense[i]
        return d if d is not None else self.layers[i].frozen_store.to_dense(fill_tag=True)

    def dense_index(self, i):
        """The live uint8 index of a dense layer (what its ``allocate``/``load_split`` keep by reference), or
        None for a sparse layer, whose frozen store holds its owners."""
        return self._dense[i]

    @property
    def owner(self):
        """Per layer, ``index(i)``."""
        return [self.index(i) for i in range(len(self._dense))]

    def free(self, i):
        d = self._dense[i]
        return d == 0 if d is not None else ~self.layers[i].frozen_store.mask()

    def view(self, i, task):
        """Bool mask of positions task ``task`` (0-based) reads: owned by tasks 0..task."""
        d = self._dense[i]
        if d is not None:
            return (d != 0) & (d <= task + 1)
        return self.layers[i].frozen_store.mask(tag_max=task + 1)

    def freeze(self, layers, task):
        if task + 1 > 255:
            raise ValueError(f"ownership holds one byte per weight: at most 255 tasks, task {task + 1} asked for")
        for d, l in zip(self._dense, layers):
            if d is None:
                l.freeze(task + 1)
            else:
                d[l.dst_mask() & (d == 0)] = task + 1
                l.freeze()

    def capacity(self, layers):
        """Fraction of each layer's positions owned by some task."""
        return [self._owned(i) / self._numel(i) if self._numel(i) else 0.0 for i in range(len(self._dense))]

    def _owned(self, i):
        d = self._dense[i]
        return int((d != 0).sum()) if d is not None else self.layers[i].frozen_store.nnz

    def count_free(self):
        """(positions, free positions) over all layers."""
        total = sum(self._numel(i) for i in range(len(self._dense)))
        return total, total - sum(self._owned(i) for i in range(len(self._dense)))

    def load(self, i, owner):
        """Restore layer i's owners from a checkpoint's dense uint8 index; returns the index to build from."""
        d = self._dense[i]
        if d is None:
            return owner
        d.copy_(owner)
        return d

    def nbytes(self):
        """Bytes of the ownership: dense indices and the frozen stores' owner bytes."""
        return sum(d.numel() if d is not None else self.layers[i].frozen_owner.numel()
                   for i, d in enumerate(self._dense))

    def _owned_keys(self, i, task):
        d = self._dense[i]
        if d is not None:
            return ((d != 0) & (d <= task + 1)).flatten().nonzero().squeeze(1)
        store = self.layers[i].frozen_store
        return store.keys()[store.tag <= task + 1]

    def encode(self, i, task, mask):
        """Task ``task``'s mask of layer i (bool over the 2-D view, or its flat positions) as packed bits over
        the positions owned by tasks 0..task (uint8 [ceil(n / 8)]); the mask must lie inside them."""
        keys = self._owned_keys(i, task)
        if mask.dtype != torch.bool:
            flat = torch.zeros(self._numel(i), dtype=torch.bool, device=keys.device)
            flat[mask.long().to(keys.device)] = True
            mask = flat
        mask = mask.reshape(-1).to(keys.device)
        bits = mask.index_select(0, keys)
        if int(bits.sum()) != int(mask.sum()):
            raise ValueError(f"layer {i}: task {task}'s mask holds positions no task 0..{task} owns")
        return pack_bits(bits).cpu()

    def decode(self, i, task, packed):
        """bool [positions] (flat): the mask ``encode`` packed."""
        keys = self._owned_keys(i, task)
        mask = torch.zeros(self._numel(i), dtype=torch.bool, device=keys.device)
        return mask.index_fill_(0, keys[unpack_bits(packed.to(keys.device), keys.numel())], True)

    def _numel(self, i):
        d = self._dense[i]
        return d.numel() if d is not None else self.layers[i]._shape2d[0] * self.layers[i]._shape2d[1]


class FrozenGuard:
    """Keeps frozen entries of each trunk ``sparse_parameter`` bit-identical across optimizer steps."""

    def __init__(self, layers, ownership):
        self.layers, self.ownership = layers, ownership
        self.refresh()

    def refresh(self):
        """Recompute flat indices of frozen entries (call after any topology change). Only layers whose
        ``sparse_parameter`` is a dense weight hold frozen entries; a ``_FrozenPlusTrainable`` layer's holds
        trainable values only, so its frozen weights need no guard."""
        self.index = []
        for i, l in enumerate(self.layers):
            if l.parameter_holds_frozen:
                self.index.append((self.ownership.index(i) != 0).flatten().nonzero().squeeze(1))
            else:
                self.index.append(torch.zeros(0, dtype=torch.int64))

    def zero_grads(self):
        for l, idx in zip(self.layers, self.index):
            g = l.sparse_parameter.grad
            if g is not None and idx.numel():
                g.view(-1).index_fill_(0, idx, 0.0)

    def step(self, optimizer):
        saved = [l.sparse_parameter.detach().view(-1)[idx].clone() if idx.numel() else None
                 for l, idx in zip(self.layers, self.index)]
        optimizer.step()
        with torch.no_grad():
            for l, idx, v in zip(self.layers, self.index, saved):
                if v is not None:
                    l.sparse_parameter.view(-1).index_copy_(0, idx, v)
