"""The DST engine: every ``update_every`` steps, drop and regrow a fraction of each sparse layer's active
weights with ONE fused ``sparsecl.ops.prune_regrow`` call over all layers, repack each layer
(``set_topology``) and move the optimizer state along.

Layers are found by the DST layer protocol: ``dst_block_size``, ``dst_mask()``, ``dense_weight()``,
``sparse_parameter`` and ``set_topology(new_mask) -> src`` (old index per element, or per row of block values,
of the new sparse_parameter; -1 if new). A layer with a ``dense_grad_hook`` attribute gets
a callable there on growth steps and hands it its dense weight gradient from backward (from the same GEMM
that then gives its sparse gradient); other layers get forward hooks that compute it from input and grad_out.
"""
import fnmatch

import torch

from ..formats import CSRLayout, block_reduce
from ..ops import prune_regrow
from . import criteria
from .densities import layer_densities

_CONFIG_KEYS = ("density", "init", "prune", "growth", "drop_fraction", "decay", "final_drop_fraction")


def is_dst_layer(module):
    return all(hasattr(module, a) for a in ("dst_block_size", "dst_mask", "dense_weight", "set_topology",
                                             "sparse_parameter"))


def _compact_score(module, t, shape):
    """|t| on the layer's score grid straight from compact storage, without building the dense weight:
    per-block sums for BSR values [nnzb, B, B], per entry for CSR values [nnz] (left unset elsewhere: prune
    scores are read at active positions only); None when the layer has no such layout."""
    layout = getattr(module, "layout", None)
    if isinstance(layout, CSRLayout) and t.dim() == 1 and t.numel() == layout.nnz and layout.shape == tuple(shape):
        score = torch.empty(layout.shape[0] * layout.shape[1], dtype=torch.float32, device=t.device)
        return score.index_copy_(0, layout.keys(), t.abs().float()).view(layout.shape)
    if module.dst_block_size == 1 or not hasattr(layout, "block_mask") or t.dim() != 3:
        return None
    grid = torch.zeros(layout.n_block_rows, layout.n_block_cols, dtype=torch.float32, device=t.device)
    grid[layout.row_idx.long(), layout.col_idx.long()] = t.abs().sum((1, 2)).float()
    return grid


class DST:
    """Dynamic sparse training over the sparse layers of ``model``.

    Call ``step()`` after every ``optimizer.step()``. At steps that are multiples of ``update_every`` (up to
    ``end_step``), each layer swaps round(f * |active ∩ eligible|) positions, f = the drop fraction at
    that step. Criteria: prune "magnitude" | "set" | "taylor" (|w * grad|, uses the parameter's .grad);
    growth "random" | "unfired" (never-active positions first) | "gradient" (RigL: |dense grad| of the
    update step's batch, captured by hooks on that batch only) | "momentum" (SNFS: moving average of the
    dense gradient, normalised like Adam when the optimizer has betas; captures every step).

    density/init: per-layer targets (``layer_densities``); layers whose nnz differs are re-topologised at
    construction (the largest-magnitude weights kept). None keeps the layers' current topology.
    groups: list of dicts {"pattern": fnmatch pattern or list of them, and any of density, init, prune,
    growth, drop_fraction, decay, final_drop_fraction}; a layer takes the first group whose pattern
    matches its name, else the top-level settings. eligible: None, dict name -> bool mask (mask shape),
    or callable(name, module) -> bool mask or None; positions outside it are never dropped or grown.
    Under torch.distributed, gradient/momentum scores are averaged over ranks and random scores use the
    same seed (seed, step, layer) on every rank, so every rank picks the same sets.
    """

    def __init__(self, model, optimizer, density=None, init="erk", prune="magnitude", growth="gradient",
                 update_every=100, end_step=None, drop_fraction=0.5, decay="cosine", final_drop_fraction=0.005,
                 groups=None, eligible=None, seed=0):
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.model, self.optimizer = model, optimizer
        self.update_every, self.end_step, self.seed = int(update_every), end_step, int(seed)
        self.eligible = eligible
        base = dict(density=density, init=init, prune=prune, growth=growth, drop_fraction=drop_fraction,
                    decay=decay, final_drop_fraction=final_drop_fraction)
        self.groups = [dict(g) for g in (groups or [])]
        for g in self.groups:
            unknown = set(g) - set(_CONFIG_KEYS) - {"pattern"}
            if "pattern" not in g or unknown:
                raise ValueError(f"each group needs 'pattern' and only keys {_CONFIG_KEYS}; got {sorted(g)}")
        self.layers = []  # (name, module, config)
        for name, module in model.named_modules():
            if is_dst_layer(module):
                cfg = dict(base)
                for g in self.groups:
                    pats = [g["pattern"]] if isinstance(g["pattern"], str) else list(g["pattern"])
                    if any(fnmatch.fnmatchcase(name, p) for p in pats):
                        cfg.update({k: v for k, v in g.items() if k != "pattern"})
                        break
                self._check_config(name, cfg)
                self.layers.append((name, module, cfg))
        if not self.layers:
            raise ValueError("model has no sparse layers (modules implementing the DST layer protocol)")
        self._shapes = {name: self._weight_shape(m) for name, m, _ in self.layers}
        self._names = {id(m): name for name, m, _ in self.layers}
        self._step = 0
        self.ever_active = {name: m.dst_mask().clone() for name, m, _ in self.layers}
        self._dense_grads = {}
        self._momentum = {}
        self._hooks = []
        self.history = []  # per update: {"step", "changed": {name: n}}
        self._apply_densities()
        self._arm_hooks()

    # configuration ------------------------------------------------------------------------------
    def _check_config(self, name, cfg):
        if cfg["prune"] not in criteria.PRUNE:
            raise ValueError(f"{name}: prune must be one of {criteria.PRUNE}, got {cfg['prune']!r}")
        if cfg["growth"] not in criteria.GROWTH:
            raise ValueError(f"{name}: growth must be one of {criteria.GROWTH}, got {cfg['growth']!r}")
        if cfg["decay"] not in criteria.DECAY:
            raise ValueError(f"{name}: decay must be one of {criteria.DECAY}, got {cfg['decay']!r}")
        if cfg["decay"] != "constant" and self.end_step is None:
            raise ValueError(f"decay={cfg['decay']!r} needs end_step (or use decay='constant')")
        for k in ("drop_fraction", "final_drop_fraction"):
            if not 0.0 <= cfg[k] <= 1.0:
                raise ValueError(f"{name}: {k} must be in [0, 1], got {cfg[k]}")

    def _group_key(self, cfg):
        return (cfg["density"], cfg["init"])

    @torch.no_grad()
    def _apply_densities(self):
        by_group = {}
        for i, (_, _, cfg) in enumerate(self.layers):
            if cfg["density"] is not None:
                by_group.setdefault(self._group_key(cfg), []).append(i)
        for (density, init), idx in by_group.items():
            shapes = [tuple(self.layers[i][1].dst_mask().shape) for i in idx]
            for i, d in zip(idx, layer_densities(shapes, density, init)):
                name, module, _ = self.layers[i]
                mask = module.dst_mask()
                target = round(d * mask.numel())
                if int(mask.sum()) == target:
                    continue
                score = block_reduce(module.dense_weight().detach().reshape(self._wshape(module, mask)),
                                     module.dst_block_size, "abs_sum").flatten().double()
                score = score + mask.flatten().double() * (score.max() + 1 if score.numel() else 0)
                keep = torch.sort(score, descending=True, stable=True).indices[:target]
                new = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
                new[keep] = True
                try:
                    self._set_topology(module, new.view(mask.shape))
                except ValueError as exc:
                    raise ValueError(f"{name}: density={density} needs {target} active positions, the layer has "
                                     f"{int(mask.sum())} and cannot change its nnz ({exc}); build it at the target "
                                     "density or pass density=None") from exc
                self.ever_active[name] |= new.view(mask.shape)

    @staticmethod
    def _weight_shape(module):
        # element layers: the dense weight in the mask's shape (conv: [out, in*kh*kw]); block layers: [out, in]
        if module.dst_block_size == 1:
            return tuple(module.dst_mask().shape)
        return tuple(module.dense_weight().shape)

    def _wshape(self, module, mask):
        if module.dst_block_size == 1:
            return tuple(mask.shape)
        return self._shapes[self._names[id(module)]]

    # schedule -----------------------------------------------------------------------------------
    @property
    def step_count(self):
        return self._step

    def is_update_step(self, step):
        return step > 0 and step % self.update_every == 0 and (self.end_step is None or step <= self.end_step)

    def drop_fraction(self, cfg, step):
        return criteria.drop_fraction_at(step, cfg["drop_fraction"], cfg["decay"], cfg["final_drop_fraction"],
                                         self.end_step)

    def step(self):
        """Count one training step; at update steps, change the topology. Returns the per-layer changes
        ({name: positions changed}) at update steps, else None."""
        self._step += 1
        if any(cfg["growth"] == "momentum" for _, _, cfg in self.layers):
            self._update_momentum()
        out = None
        if self.is_update_step(self._step):
            out = self._update()
        self._arm_hooks()
        return out

    # dense gradients (captured by hooks on the batches that need them) --------------------------
    def _needs_dense_grad(self, step):
        need_grad = self.is_update_step(step) and any(c["growth"] == "gradient" for _, _, c in self.layers)
        need_mom = any(c["growth"] == "momentum" for _, _, c in self.layers) and (
            self.end_step is None or step <= self.end_step)
        return need_grad or need_mom

    def _disarm(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for _, module, _ in self.layers:
            if hasattr(module, "dense_grad_hook"):
                module.dense_grad_hook = None

    def _arm_hooks(self):
        self._disarm()
        self._dense_grads = {}
        if not self._needs_dense_grad(self._step + 1):
            return
        for name, module, cfg in self.layers:
            if cfg["growth"] not in ("gradient", "momentum"):
                continue
            if hasattr(module, "dense_grad_hook"):  # the layer's backward hands over its dense dW (one GEMM)
                module.dense_grad_hook = self._accumulator(name)
            else:
                self._hooks.append(module.register_forward_hook(self._capture(name, module)))

    def _accumulator(self, name):
        def add(g):
            prev = self._dense_grads.get(name)
            self._dense_grads[name] = g if prev is None else prev + g
        return add

    def _capture(self, name, module):
        add = self._accumulator(name)

        def hook(mod, inputs, output):
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0].detach()
            output.register_hook(lambda go: add(self._dense_weight_grad(module, x, go.detach())))
        return hook

    @staticmethod
    def _dense_weight_grad(module, x, go):
        """dL/dW for the dense weight of ``module`` from its input and output gradient ([out, in] or
        [out, in*kh*kw] for convs)."""
        if hasattr(module, "kernel_size"):
            out_c = go.shape[1]
            w_shape = (out_c, x.shape[1] // getattr(module, "groups", 1), *module.kernel_size)
            g = torch.nn.grad.conv2d_weight(x, w_shape, go, module.stride, module.padding, module.dilation,
                                            getattr(module, "groups", 1))
            return g.reshape(out_c, -1)
        x2, g2 = x.reshape(-1, x.shape[-1]), go.reshape(-1, go.shape[-1])
        from .. import ops
        dense_grad = getattr(ops, "masked_linear_dense_grad", None)
        return dense_grad(x2, g2) if dense_grad is not None else g2.T.to(x2.dtype) @ x2

    def _all_reduce_mean(self, t):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(t)
            t /= torch.distributed.get_world_size()
        return t

    def _dense_grad(self, name, module, mask):
        g = self._dense_grads.get(name)
        if g is None:
            raise RuntimeError(f"{name}: no dense gradient was captured for this update step; run forward and "
                               "backward through the model between DST steps")
        return self._all_reduce_mean(g.reshape(self._wshape(module, mask)).float())

    def _betas(self):
        group = self.optimizer.param_groups[0]
        if "betas" in group:
            return group["betas"]
        return (group.get("momentum", 0.9) or 0.9, None)

    @torch.no_grad()
    def _update_momentum(self):
        b1, b2 = self._betas()
        for name, module, cfg in self.layers:
            if cfg["growth"] != "momentum" or name not in self._dense_grads:
                continue
            g = self._all_reduce_mean(self._dense_grads[name].float())
            m, v = self._momentum.get(name, (torch.zeros_like(g), torch.zeros_like(g) if b2 else None))
            m.mul_(b1).add_(g, alpha=1 - b1)
            if b2 is not None:
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
            self._momentum[name] = (m, v)

    # the update ---------------------------------------------------------------------------------
    def _random_seed(self, layer_index, salt):
        return (self.seed * 1_000_003 + self._step * 10_007 + layer_index * 101 + salt) % (2 ** 63)

    @staticmethod
    def _param_as_dense(module, t):
        """A tensor shaped like ``sparse_parameter`` placed at its dense positions (zeros elsewhere)."""
        p = module.sparse_parameter
        saved = p.data
        try:
            p.data = t.to(saved.dtype)
            return module.dense_weight().detach().clone()
        finally:
            p.data = saved

    def _scores(self, i, name, module, cfg, mask):
        shape = self._wshape(module, mask)
        B = module.dst_block_size
        prune = None
        if cfg["prune"] == "taylor":
            p = module.sparse_parameter
            if p.grad is None:
                raise RuntimeError(f"{name}: prune='taylor' needs the parameter's .grad at the update step "
                                   "(call DST.step() before optimizer.zero_grad())")
            prune = _compact_score(module, p.detach() * p.grad, mask.shape)
            if prune is None:
                w = module.dense_weight().detach().reshape(shape)
                prune = criteria.taylor_score(w, self._param_as_dense(module, p.grad).reshape(shape))
        elif cfg["prune"] == "magnitude":
            prune = _compact_score(module, module.sparse_parameter.detach(), mask.shape)
            if prune is None:
                prune = criteria.magnitude_score(module.dense_weight().detach().reshape(shape))
        else:
            w = module.dense_weight().detach().reshape(shape)
            prune = criteria.set_score(w, mask if B == 1 else torch.ones_like(w, dtype=torch.bool))
        growth = cfg["growth"]
        if growth == "random":
            grow = criteria.random_score(mask.shape, self._random_seed(i, 1), mask.device)
        elif growth == "unfired":
            grow = criteria.unfired_score(self.ever_active[name], self._random_seed(i, 2))
        elif growth == "gradient":
            grow = self._dense_grad(name, module, mask)
        else:
            if name not in self._momentum:
                raise RuntimeError(f"{name}: no momentum yet: growth='momentum' needs dense gradients captured "
                                   "on the steps before the update")
            m, v = self._momentum[name]
            eps = self.optimizer.param_groups[0].get("eps", 1e-8)
            grow = (m if v is None else m / (v.sqrt() + eps)).reshape(shape)
        # element-level scores become per-block sums of |.|; random scores are already per block
        if prune.shape != mask.shape:
            prune = block_reduce(prune.float(), B, "abs_sum")
        if growth in ("gradient", "momentum"):  # |.| in place where grow is this update's own tensor
            own = growth == "gradient" or self._momentum[name][1] is not None
            grow = block_reduce(grow.float(), B, "abs_sum", overwrite=own) if B > 1 else (
                grow.abs_() if own else grow.abs())
        return prune.to(torch.float32), grow.to(torch.float32)

    def _eligible(self, name, module, mask):
        e = self.eligible
        if e is None:
            return None
        out = e(name, module) if callable(e) else e.get(name)
        if out is None:
            return torch.ones_like(mask)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bool or out.shape != mask.shape:
            raise ValueError(f"eligible for {name} must be a bool tensor of the mask shape {tuple(mask.shape)}")
        return out.to(mask.device)

    @torch.no_grad()
    def _update(self):
        masks, prunes, grows, counts, eligible = [], [], [], [], []
        for i, (name, module, cfg) in enumerate(self.layers):
            mask = module.dst_mask().clone()
            elig = self._eligible(name, module, mask)
            prune, grow = self._scores(i, name, module, cfg, mask)
            active = int((mask & elig).count_nonzero()) if elig is not None else int(mask.count_nonzero())
            masks.append(mask)
            prunes.append(prune)
            grows.append(grow)
            counts.append(int(round(self.drop_fraction(cfg, self._step) * active)))
            eligible.append(elig)
        use_elig = any(e is not None for e in eligible)
        eligible = [e if e is not None else torch.ones_like(m) for e, m in zip(eligible, masks)] if use_elig else None
        changed = prune_regrow([None] * len(masks), masks, prunes, grows, counts, eligible)  # layers repack weights
        result = {}
        for (name, module, _), mask, n in zip(self.layers, masks, changed):
            result[name] = n
            if n:
                self._set_topology(module, mask)
                self.ever_active[name] |= mask
        self.history.append({"step": self._step, "changed": result})
        return result

    def _set_topology(self, module, new_mask):
        """Repack the layer and move its optimizer state along: ``src`` (from set_topology) maps each element of
        the new sparse_parameter, or each row (dim 0, for block values), to its old index, -1 if new."""
        p = module.sparse_parameter
        old_shape = p.shape
        src = module.set_topology(new_mask)
        state = self.optimizer.state.get(p) if self.optimizer is not None else None
        if not state:
            return
        rows = src.numel() != p.numel()
        invalid, idx = src < 0, src.clamp(min=0)
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.shape == old_shape and v.numel() > 0:
                if rows:
                    moved = v.reshape(old_shape[0], -1).index_select(0, idx).masked_fill_(invalid[:, None], 0)
                else:
                    moved = v.flatten().index_select(0, idx).masked_fill_(invalid, 0)
                state[k] = moved.view(p.shape)

    # checkpointing ------------------------------------------------------------------------------
    def state_dict(self):
        return {"step": self._step, "ever_active": {k: v.clone() for k, v in self.ever_active.items()},
                "momentum": {k: tuple(t.clone() if t is not None else None for t in mv)
                             for k, mv in self._momentum.items()},
                "history": list(self.history)}

    def load_state_dict(self, state):
        missing = set(self.ever_active) - set(state["ever_active"])
        if missing:
            raise ValueError(f"state_dict has no entry for layers {sorted(missing)}")
        self._step = int(state["step"])
        self.ever_active = {k: v.clone() for k, v in state["ever_active"].items()}
        self._momentum = {k: tuple(t.clone() if t is not None else None for t in mv)
                          for k, mv in state["momentum"].items()}
        self.history = list(state.get("history", []))
        self._arm_hooks()

    def remove(self):
        """Detach the hooks (the engine can be dropped afterwards)."""
        self._disarm()

    def densities(self):
        return {name: float(m.dst_mask().float().mean()) if m.dst_mask().numel() else 0.0
                for name, m, _ in self.layers}


__all__ = ["DST", "is_dst_layer"]
