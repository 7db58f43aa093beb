"""Sparse weight layouts: index structures only, values live with the layer.

``BlockSparseLayout`` describes W [out, in] as BSR over (output block rows x input block columns)
with block size B in {16, 32, 64}. Features need not be multiples of B: the last block row/column
is clipped, and the entries of an edge block past the matrix edge are ignored.

Index tensors (all int32, on the layout's device):
  row_ptr   [n_block_rows + 1]  CSR offsets over block rows
  col_idx   [nnzb]              block column of each block, strictly increasing within a row
  row_idx   [nnzb]              block row of each block (COO form, for the SDDMM)
  t_row_ptr [n_block_cols + 1]  transposed offsets over block columns
  t_col_idx [nnzb]              block row of each transposed entry
  t_perm    [nnzb]              index into values of each transposed entry (no second values copy)
"""
import math

import torch

BLOCK_SIZES = (16, 32, 64)
_INDEX_NAMES = ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm")


def _as_index(t, name):
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > torch.iinfo(torch.int32).max):
        raise ValueError(f"{name} has entries outside [0, 2**31)")
    return t.to(torch.int32).contiguous()


def _transpose_index(row_ptr, col_idx, n_cols):
    """(row_idx, t_row_ptr, t_col_idx, t_perm) for a CSR index; stable, so rows stay sorted per column."""
    n_rows = row_ptr.numel() - 1
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    row_idx = torch.repeat_interleave(torch.arange(n_rows, device=row_ptr.device), counts)
    cols = col_idx.long()
    t_perm = torch.argsort(cols * max(n_rows, 1) + row_idx, stable=True)
    t_row_ptr = torch.zeros(n_cols + 1, dtype=torch.int64, device=row_ptr.device)
    t_row_ptr[1:] = torch.cumsum(torch.bincount(cols, minlength=n_cols), 0)
    i32 = torch.int32
    return row_idx.to(i32), t_row_ptr.to(i32), row_idx[t_perm].to(i32), t_perm.to(i32)


def validate_csr(row_ptr, col_idx, n_rows, n_cols, what="layout"):
    """Raise ValueError unless (row_ptr, col_idx) is a valid CSR index of an n_rows x n_cols pattern."""
    if row_ptr.numel() != n_rows + 1:
        raise ValueError(f"{what}: row_ptr must have {n_rows + 1} entries (rows + 1), got {row_ptr.numel()}")
    rp = row_ptr.long()
    if int(rp[0]) != 0:
        raise ValueError(f"{what}: row_ptr[0] must be 0, got {int(rp[0])}")
    if n_rows and bool((rp[1:] < rp[:-1]).any()):
        raise ValueError(f"{what}: row_ptr must be non-decreasing")
    if int(rp[-1]) != col_idx.numel():
        raise ValueError(f"{what}: row_ptr[-1]={int(rp[-1])} does not match len(col_idx)={col_idx.numel()}")
    if col_idx.numel() == 0:
        return
    ci = col_idx.long()
    if int(ci.max()) >= n_cols:
        raise ValueError(f"{what}: col_idx has index {int(ci.max())} out of range for {n_cols} columns")
    # within a row, columns must strictly increase; a row boundary may reset them
    starts = torch.zeros(ci.numel(), dtype=torch.bool, device=ci.device)
    starts[rp[:-1][rp[:-1] < ci.numel()]] = True
    bad = (ci[1:] <= ci[:-1]) & ~starts[1:]
    if bool(bad.any()):
        j = int(bad.nonzero()[0]) + 1
        kind = "duplicate" if int(ci[j]) == int(ci[j - 1]) else "unsorted"
        raise ValueError(f"{what}: {kind} column indices within a row (position {j}: {int(ci[j - 1])}, {int(ci[j])})")


class BlockSparseLayout:
    """BSR index of a [out_features, in_features] weight with square blocks of ``block_size``."""

    def __init__(self, row_ptr, col_idx, shape, block_size, *, _derived=None, validate=True):
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size}")
        out_f, in_f = (int(s) for s in shape)
        if out_f < 0 or in_f < 0:
            raise ValueError(f"shape must be non-negative, got {tuple(shape)}")
        self.shape = (out_f, in_f)
        self.block_size = int(block_size)
        self.n_block_rows = math.ceil(out_f / block_size)
        self.n_block_cols = math.ceil(in_f / block_size)
        if validate:
            row_ptr, col_idx = _as_index(row_ptr, "row_ptr"), _as_index(col_idx, "col_idx")
            validate_csr(row_ptr, col_idx, self.n_block_rows, self.n_block_cols, "BlockSparseLayout")
        self.row_ptr, self.col_idx = row_ptr, col_idx
        if _derived is None:
            _derived = _transpose_index(row_ptr, col_idx, self.n_block_cols)
        self.row_idx, self.t_row_ptr, self.t_col_idx, self.t_perm = _derived

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_block_mask(cls, block_mask, shape=None, block_size=32):
        """Layout of the True entries of a bool [n_block_rows, n_block_cols] mask."""
        block_mask = torch.as_tensor(block_mask)
        if block_mask.dtype != torch.bool or block_mask.dim() != 2:
            raise ValueError(f"block_mask must be a 2-D bool tensor, got {block_mask.dtype} {tuple(block_mask.shape)}")
        if shape is None:
            shape = (block_mask.shape[0] * block_size, block_mask.shape[1] * block_size)
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size}")
        expect = (math.ceil(shape[0] / block_size), math.ceil(shape[1] / block_size))
        if tuple(block_mask.shape) != expect:
            raise ValueError(f"block_mask shape {tuple(block_mask.shape)} != {expect} blocks for weight shape "
                             f"{tuple(shape)} and block size {block_size}")
        rows, cols = block_mask.nonzero(as_tuple=True)
        row_ptr = torch.zeros(expect[0] + 1, dtype=torch.int32, device=block_mask.device)
        row_ptr[1:] = torch.cumsum(block_mask.sum(1), 0)
        return cls(row_ptr, cols.to(torch.int32), shape, block_size, validate=False)

    @classmethod
    def from_dense(cls, weight, block_size=32):
        """Layout of the blocks of ``weight`` that hold any nonzero."""
        return cls.from_block_mask(block_reduce(weight != 0, block_size, "any"), tuple(weight.shape), block_size)

    @classmethod
    def random(cls, shape, density, block_size=32, generator=None, device=None):
        """A layout with round(density * n_blocks) blocks chosen uniformly at random."""
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")
        nb = (math.ceil(shape[0] / block_size), math.ceil(shape[1] / block_size))
        total = nb[0] * nb[1]
        keep = torch.randperm(total, generator=generator)[: round(density * total)]
        mask = torch.zeros(total, dtype=torch.bool)
        mask[keep] = True
        return cls.from_block_mask(mask.view(nb).to(device), shape, block_size)

    # queries ---------------------------------------------------------------------------------
    @property
    def nnzb(self):
        return self.col_idx.numel()

    @property
    def device(self):
        return self.row_ptr.device

    @property
    def density(self):
        total = self.n_block_rows * self.n_block_cols
        return self.nnzb / total if total else 0.0

    def index_tensors(self):
        return {n: getattr(self, n) for n in _INDEX_NAMES}

    def to(self, device):
        t = {n: v.to(device) for n, v in self.index_tensors().items()}
        return BlockSparseLayout(t["row_ptr"], t["col_idx"], self.shape, self.block_size, validate=False,
                                 _derived=(t["row_idx"], t["t_row_ptr"], t["t_col_idx"], t["t_perm"]))

    def block_mask(self):
        m = torch.zeros(self.n_block_rows, self.n_block_cols, dtype=torch.bool, device=self.device)
        m[self.row_idx.long(), self.col_idx.long()] = True
        return m

    def mask(self):
        """Bool [out, in] mask of the entries covered by active blocks."""
        B = self.block_size
        m = self.block_mask().repeat_interleave(B, 0).repeat_interleave(B, 1)
        return m[: self.shape[0], : self.shape[1]].contiguous()

    def to_dense(self, values):
        """Dense [out, in] weight from block ``values`` [nnzb, B, B]."""
        self.check_values(values)
        B = self.block_size
        full = values.new_zeros(self.n_block_rows, B, self.n_block_cols, B)
        full[self.row_idx.long(), :, self.col_idx.long(), :] = values
        return full.reshape(self.n_block_rows * B, self.n_block_cols * B)[: self.shape[0], : self.shape[1]]

    def values_from_dense(self, weight):
        """Block values [nnzb, B, B] of ``weight`` at this layout (edge padding zero)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != layout shape {self.shape}")
        B = self.block_size
        padded = weight.new_zeros(self.n_block_rows * B, self.n_block_cols * B)
        padded[: self.shape[0], : self.shape[1]] = weight
        blocks = padded.view(self.n_block_rows, B, self.n_block_cols, B)
        return blocks[self.row_idx.long(), :, self.col_idx.long(), :].contiguous()

    def check_values(self, values):
        B = self.block_size
        if values.dim() != 3 or tuple(values.shape) != (self.nnzb, B, B):
            raise ValueError(f"values must be [{self.nnzb}, {B}, {B}] for this layout, got {tuple(values.shape)}")

    def __repr__(self):
        return (f"BlockSparseLayout(shape={self.shape}, block_size={self.block_size}, nnzb={self.nnzb}, "
                f"density={self.density:.3f})")


def block_reduce(t, block_size, how="sum"):
    """Reduce a [rows, cols] tensor over B x B blocks (edge blocks clipped): "sum", "any" or "abs_sum"."""
    B = block_size
    nb = (math.ceil(t.shape[0] / B), math.ceil(t.shape[1] / B))
    src = t.abs() if how == "abs_sum" else t
    padded = src.new_zeros(nb[0] * B, nb[1] * B)
    padded[: t.shape[0], : t.shape[1]] = src
    blocks = padded.view(nb[0], B, nb[1], B)
    return blocks.any(3).any(1) if how == "any" else blocks.sum((1, 3))
