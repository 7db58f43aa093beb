"""SparseLinear: an unstructured (per-weight) sparse linear layer that stores and computes sparsely.

Two storage modes behind one interface:
  "csr"     values [nnz] + int32 CSR index buffers: parameter and optimizer memory scale with nnz,
            compute is ``ops.csr_linear`` (pays off at low density).
  "masked"  dense weight + bool mask buffer (+ optional ``grad_mask`` for continual learning),
            compute is ``ops.masked_linear`` (moderate density, where CSR does not pay).
"auto" picks by density from the crossover measured on CPU (see ``CSR_MAX_DENSITY``).
In csr mode each pass (forward, dX, dValues) runs sparse or densely on the effective weight, as ``sparsecl.dispatch``
decides (``layer.dispatch`` overrides, ``layer.dispatch_choice`` reads the last choice), with the same results and
gradients; masked mode always computes densely (masked_linear is a GEMM over ``weight * mask``).
Implements the DST layer protocol: dst_block_size, dst_mask(), dense_weight(), sparse_parameter,
set_topology(new_mask) -> src.
"""
import math

import torch
from torch import nn

from ..dispatch import DispatchMixin
from ..formats import CSRLayout, repack_values_
from ..ops import csr_linear, masked_linear
from ..ops.dense_or_sparse import csr_linear_spec

MODES = ("auto", "csr", "masked")
# Crossover of fwd+bwd time, csr_linear vs masked_linear, 2-core AMD EPYC (Zen 4), fp32, T=512,
# 4096 -> 4096, timed round-robin in one run (bench.harness.measure_interleaved, median) under load
# ~14.7 (other jobs sharing the 2 cores; absolute times are ~10x an idle machine's, ratios are what count):
#   d=0.2: csr 1898 ms, masked 3229 ms (0.59x)   d=0.3: 2305 / 3083 ms (0.75x)
#   d=0.4: 3129 / 3350 ms (0.93x)                d=0.5: 4114 / 3501 ms (1.17x)
# so "auto" uses CSR up to density 0.4 and the masked dense path above (crossover ~0.44).
CSR_MAX_DENSITY = 0.4

# dispatch record of masked mode: masked_linear's kernels are dense GEMMs over weight * mask in every direction
_MASKED_RECORD = {"choice": {"forward": "dense", "dx": "dense", "dw": "dense"}, "source": "masked storage",
                  "density": None, "key": None, "modes": None, "ms": None}

_INDEX_BUFFERS = ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm")
_SAVED_BUFFERS = ("row_ptr", "col_idx")


def resolve_mode(mode, density):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "csr" if density <= CSR_MAX_DENSITY else "masked"
    return mode


def topk_mask(weight, density):
    """Bool mask of the round(density * numel) largest-magnitude entries of ``weight``."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    k = round(density * weight.numel())
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[torch.topk(weight.detach().abs().flatten(), k, sorted=False).indices] = True
    return mask.view(weight.shape)


class SparseLinear(DispatchMixin, nn.Module):
    """``y = x @ W.T + b`` with an unstructured sparse W [out, in].

    density: fraction of active weights (a random topology) unless ``mask`` (bool [out, in]) is given;
    mode: "auto" | "csr" | "masked" (see module docstring).
    """

    dst_block_size = 1

    def __init__(self, in_features, out_features, bias=True, density=0.1, mode="auto", *, mask=None, device=None,
                 dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (self.out_features, self.in_features)
        if mask is None:
            if not 0.0 <= density <= 1.0:
                raise ValueError(f"density must be in [0, 1], got {density}")
            mask = CSRLayout.random(shape, density, device=device).mask()
        else:
            mask = torch.as_tensor(mask, device=device)
            if mask.dtype != torch.bool or tuple(mask.shape) != shape:
                raise ValueError(f"mask must be bool {shape}, got {mask.dtype} {tuple(mask.shape)}")
        total = shape[0] * shape[1]
        self.mode = resolve_mode(mode, int(mask.sum()) / total if total else 0.0)
        factory = dict(device=mask.device, dtype=dtype)
        if self.mode == "csr":
            layout = CSRLayout.from_mask(mask)
            self._set_layout(layout)
            self.values = nn.Parameter(torch.empty(layout.nnz, **factory))
        else:
            self.weight = nn.Parameter(torch.empty(shape, **factory))
            self.register_buffer("weight_mask", mask.contiguous())
            self.register_buffer("weight_grad_mask", None)
        self.bias = nn.Parameter(torch.empty(self.out_features, **factory)) if bias else None
        self.dense_grad_hook = None  # DST protocol: set by the engine on growth steps (see ops.csr_linear)
        self.reset_parameters()

    # storage ---------------------------------------------------------------------------------
    def _set_layout(self, layout):
        # only row_ptr/col_idx are saved; the derived (transposed) index is rebuilt on load
        for name, t in layout.index_tensors().items():
            self.register_buffer(name, t, persistent=name in _SAVED_BUFFERS)

    @property
    def layout(self):
        """The current CSRLayout (csr mode; a view over this module's index buffers)."""
        if self.mode != "csr":
            raise AttributeError("layout exists only in csr mode")
        t = [getattr(self, n) for n in _INDEX_BUFFERS]
        return CSRLayout(t[0], t[1], (self.out_features, self.in_features), validate=False, _derived=tuple(t[2:]))

    @property
    def sparse_parameter(self):
        """The parameter holding the trainable values: ``values`` [nnz] (csr) or ``weight`` [out, in] (masked)."""
        return self.values if self.mode == "csr" else self.weight

    @property
    def grad_mask(self):
        """Bool [out, in]: positions that receive weight gradient (masked mode; default: the mask)."""
        if self.mode != "masked":
            return self.mask()
        return self.weight_mask if self.weight_grad_mask is None else self.weight_grad_mask

    @grad_mask.setter
    def grad_mask(self, value):
        if self.mode != "masked":
            raise ValueError("grad_mask needs mode='masked' (csr storage trains every stored value)")
        if value is not None:
            value = torch.as_tensor(value, device=self.weight.device)
            if value.dtype != torch.bool or value.shape != self.weight.shape:
                raise ValueError(f"grad_mask must be bool {tuple(self.weight.shape)}, got {value.dtype} "
                                 f"{tuple(value.shape)}")
            value = value.contiguous()
        self.weight_grad_mask = value

    def reset_parameters(self):
        # nn.Linear's distribution U(-1/sqrt(in), 1/sqrt(in)); inactive dense entries kept at zero
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        with torch.no_grad():
            self.sparse_parameter.uniform_(-bound, bound)
            if self.mode == "masked":
                self.weight.mul_(self.weight_mask)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    # compute ---------------------------------------------------------------------------------
    def forward(self, x):
        hook = self.dense_grad_hook
        if self.mode == "csr":
            layout = self.layout
            return self.dispatcher(x, self.values, self.bias, lambda: csr_linear_spec(layout), layout.density,
                                   lambda: csr_linear(x, self.values, layout, self.bias, dense_grad_hook=hook), hook)
        self.dispatcher.last = _MASKED_RECORD
        return masked_linear(x, self.weight, self.weight_mask, self.bias, self.weight_grad_mask,
                             dense_grad_hook=hook)

    def dense_weight(self):
        """The effective dense weight [out, in] (differentiable in the sparse parameter)."""
        if self.mode == "csr":
            return self.layout.to_dense(self.values)
        return self.weight * self.weight_mask

    def mask(self):
        """Bool [out, in]: True where the weight is active."""
        return self.layout.mask() if self.mode == "csr" else self.weight_mask.clone()

    def dst_mask(self):
        return self.mask()

    @property
    def nnz(self):
        return self.layout.nnz if self.mode == "csr" else int(self.weight_mask.count_nonzero())

    @property
    def density(self):
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    # DST protocol ------------------------------------------------------------------------------
    @torch.no_grad()
    def set_topology(self, new_mask):
        """Repack to bool [out, in] ``new_mask`` (same nnz): surviving weights keep their values
        bit-identically, new positions get 0. Returns src (int64, one entry per element of the new
        sparse_parameter): the old flat index, or -1 where the position is new (masked: changed)."""
        shape = (self.out_features, self.in_features)
        new_mask = torch.as_tensor(new_mask, device=self.sparse_parameter.device)
        if new_mask.dtype != torch.bool or tuple(new_mask.shape) != shape:
            raise ValueError(f"new_mask must be bool {shape}, got {new_mask.dtype} {tuple(new_mask.shape)}")
        if int(new_mask.count_nonzero()) != self.nnz:  # count_nonzero: ~20x a bool sum
            raise ValueError(f"new_mask has {int(new_mask.sum())} active entries, the layer has {self.nnz}")
        if self.mode == "csr":
            layout, src = self.layout.with_topology(new_mask)
            self._set_layout(layout)
            return repack_values_(self.values, src)
        changed = (new_mask != self.weight_mask).flatten()
        self.weight.masked_fill_(~new_mask, 0)
        self.weight.view(-1)[changed & new_mask.flatten()] = 0
        self.weight_mask.copy_(new_mask)
        src = torch.arange(new_mask.numel(), device=new_mask.device)
        src[changed] = -1
        return src

    # construction / serialisation ---------------------------------------------------------------
    @classmethod
    def from_dense(cls, linear, density=None, mask=None, mode="auto"):
        """Convert an ``nn.Linear`` keeping its weights: those in ``mask``, or the round(density * numel)
        largest-magnitude ones."""
        w = linear.weight.detach()
        if (density is None) == (mask is None):
            raise ValueError("give exactly one of density= or mask=")
        if mask is None:
            mask = topk_mask(w, density)
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, mode=mode,
                  mask=mask.to(w.device), device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if mod.mode == "csr":
                mod.values.copy_(mod.layout.values_from_dense(w))
            else:
                mod.weight.copy_(w * mod.weight_mask)
            if linear.bias is not None:
                mod.bias.copy_(linear.bias)
        return mod

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        if self.mode == "csr":
            # the topology may differ from this module's: adopt (and validate) the saved layout first
            keys = [prefix + n for n in _SAVED_BUFFERS]
            if all(k in state_dict for k in keys):
                try:
                    layout = CSRLayout(state_dict[keys[0]], state_dict[keys[1]], (self.out_features, self.in_features))
                except ValueError as exc:
                    errors.append(f"{prefix}: invalid saved layout: {exc}")
                    return
                self._set_layout(layout.to(self.values.device))
                if self.values.shape[0] != layout.nnz:
                    self.values = nn.Parameter(self.values.new_empty(layout.nnz))
        else:
            key = prefix + "weight_grad_mask"
            if key in state_dict and self.weight_grad_mask is None:
                self.weight_grad_mask = torch.empty_like(self.weight_mask)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.mode}, density={self.density:.3f}")
