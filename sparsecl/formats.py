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

``CSRLayout`` is the element-granular twin (its derived index is computed on first use);
``UnionLayout`` (``formats_union``) is one CSRLayout over two disjoint parts of a weight, frozen (read-only
values) and trainable, for the ops that compute both in one kernel call; ``CompactCSR`` (``formats_compact``)
stores a sparse matrix in the fewest bytes (16-bit column indices where the shape allows, no derived index).
"""
import math

import torch

from . import _extension

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
    if row_ptr.device.type == "cpu" and _extension.AVAILABLE:  # one counting-sort pass in C++
        return torch.ops.sparsecl.csr_transpose(row_ptr, col_idx, n_cols)
    return _transpose_index_torch(row_ptr, col_idx, n_cols)


def _transpose_index_torch(row_ptr, col_idx, n_cols):
    """``_transpose_index`` in torch ops (any device; the reference for the C++ csr_transpose)."""
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
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
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
        return entries_at(weight, self.row_idx, self.col_idx, self.block_size)

    def check_values(self, values):
        B = self.block_size
        if values.dim() != 3 or tuple(values.shape) != (self.nnzb, B, B):
            raise ValueError(f"values must be [{self.nnzb}, {B}, {B}] for this layout, got {tuple(values.shape)}")

    def __repr__(self):
        return (f"BlockSparseLayout(shape={self.shape}, block_size={self.block_size}, nnzb={self.nnzb}, "
                f"density={self.density:.3f})")


def rows_of(row_ptr, nnz):
    """int32 [nnz]: the row of each entry of a CSR index (row_ptr [rows + 1])."""
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), dtype=torch.int32, device=row_ptr.device),
                                   counts.long(), output_size=nnz)


def _flat_keys(row_idx, col_idx, n_cols):
    """int64 row-major flat positions row * n_cols + col of index pairs."""
    return torch.add(col_idx, row_idx.long(), alpha=n_cols)


def entries_at(weight, row_idx, col_idx, block_size=1):
    """The entries of a dense [rows, cols] ``weight`` at an indexed layout's positions: [nnz] for elements
    (block_size 1), [nnzb, B, B] for blocks (zero outside the weight at clipped edge blocks)."""
    if block_size == 1:
        return weight.reshape(-1).index_select(0, _flat_keys(row_idx, col_idx, weight.shape[1]))
    B = block_size
    nb = (math.ceil(weight.shape[0] / B), math.ceil(weight.shape[1] / B))
    if tuple(weight.shape) != (nb[0] * B, nb[1] * B):
        weight = torch.nn.functional.pad(weight, (0, nb[1] * B - weight.shape[1], 0, nb[0] * B - weight.shape[0]))
    return weight.reshape(nb[0], B, nb[1], B)[row_idx.long(), :, col_idx.long(), :]


def block_reduce(t, block_size, how="sum", overwrite=False):
    """Reduce a [rows, cols] tensor over B x B blocks (edge blocks clipped): "sum", "any" or "abs_sum".
    overwrite: ``t`` may be used as scratch (abs_sum takes |t| in place instead of a copy)."""
    B = block_size
    nb = (math.ceil(t.shape[0] / B), math.ceil(t.shape[1] / B))
    if tuple(t.shape) != (nb[0] * B, nb[1] * B):
        padded = t.new_zeros(nb[0] * B, nb[1] * B)
        padded[: t.shape[0], : t.shape[1]] = t
        t, overwrite = padded, True
    if how == "abs_sum":
        t = t.abs_() if overwrite else t.abs()
    blocks = t.reshape(nb[0], B, nb[1], B)
    # the inner (contiguous) block dim first: several times faster than one reduction over (1, 3)
    return blocks.any(3).any(1) if how == "any" else blocks.sum(3).sum(1)


def repack_values_(values, src):
    """Move the rows of a values Parameter ([n, ...]) to a new topology: new row j is old row src[j], or zeros
    where src[j] < 0 (a new entry). Kept rows are copied bit-identically. With an unchanged row count the
    storage is rewritten in place, so optimizer and DDP views of it stay valid; otherwise ``values.data`` is
    replaced. Returns src as int64 (the per-row map the optimizer-state remap takes)."""
    src = src.long()
    fresh = src < 0
    rows = values.detach().unsqueeze(1) if values.dim() == 1 else values.detach().flatten(1)
    if rows.shape[0]:
        new = rows.index_select(0, src.clamp(min=0)).masked_fill_(fresh[:, None], 0)
    else:  # nothing to keep (every src is -1)
        new = rows.new_zeros(src.numel(), rows.shape[1])
    if src.numel() == values.shape[0]:
        rows.copy_(new)
    else:
        values.data = new.view(src.numel(), *values.shape[1:])
    return src


def _merge_positions(kept, grown):
    """Positions in the merged sorted order of two sorted, disjoint int64 key tensors.

    Only the (few) grown keys are binary-searched; the kept ones shift by a prefix count: O(n + g log n)."""
    ins = torch.searchsorted(kept, grown)
    pos_grown = torch.arange(grown.numel(), device=grown.device) + ins
    hist = torch.zeros(kept.numel() + 1, dtype=torch.int64, device=kept.device)
    hist.index_add_(0, ins, torch.ones_like(ins))
    before = hist[: kept.numel()].cumsum(0)
    pos_kept = torch.arange(kept.numel(), device=kept.device) + before
    return pos_kept, pos_grown


class CSRLayout:
    """Element-granular CSR index of a [out_features, in_features] weight (values live with the layer).

    Index tensors are int32 with the same names and meaning as ``BlockSparseLayout`` (rows are output
    features, columns input features): row_ptr [out+1], col_idx [nnz], row_idx [nnz], t_row_ptr [in+1],
    t_col_idx [nnz], t_perm [nnz]. row_ptr and col_idx define the layout; the other four (derived) are
    computed on first use and kept (``drop_derived`` frees them). ``update``/``with_topology`` rebuild after a
    topology change by merging sorted index lists (O(nnz) plus a sort of the grown entries), not from a dense
    matrix.
    """

    def __init__(self, row_ptr, col_idx, shape, validate=True, *, _derived=None):
        out_f, in_f = (int(s) for s in shape)
        if out_f < 0 or in_f < 0:
            raise ValueError(f"shape must be non-negative, got {tuple(shape)}")
        self.shape = (out_f, in_f)
        if validate:
            row_ptr, col_idx = _as_index(row_ptr, "row_ptr"), _as_index(col_idx, "col_idx")
            if row_ptr.device != col_idx.device:
                raise ValueError(f"row_ptr ({row_ptr.device}) and col_idx ({col_idx.device}) are on different devices")
            validate_csr(row_ptr, col_idx, out_f, in_f, "CSRLayout")
        self.row_ptr, self.col_idx = row_ptr, col_idx
        # the derived index (row_idx and the transposed one), each computed on first use and kept; None: not yet
        self._derived = dict(zip(_INDEX_NAMES[2:], _derived if _derived is not None else (None,) * 4))

    def _get_derived(self, name):
        t = self._derived[name]
        if t is None:
            if name == "row_idx":
                t = rows_of(self.row_ptr, self.nnz)
            else:
                full = _transpose_index(self.row_ptr, self.col_idx, self.shape[1])
                for n, v in zip(_INDEX_NAMES[3:], full[1:]):
                    if self._derived[n] is None:
                        self._derived[n] = v
                t = self._derived[name]
            self._derived[name] = t
        return t

    row_idx = property(lambda self: self._get_derived("row_idx"), doc="int32 [nnz] row of each entry (derived)")
    t_row_ptr = property(lambda self: self._get_derived("t_row_ptr"), doc="int32 [in+1] transposed offsets (derived)")
    t_col_idx = property(lambda self: self._get_derived("t_col_idx"), doc="int32 [nnz] transposed rows (derived)")
    t_perm = property(lambda self: self._get_derived("t_perm"), doc="int32 [nnz] value of each transposed entry")

    def drop_derived(self, *names):
        """Forget derived index tensors (``row_idx``, ``t_row_ptr``, ``t_col_idx``, ``t_perm``) to free their
        memory; they are recomputed on their next use. Returns self."""
        for n in names:
            if n not in self._derived:
                raise ValueError(f"{n!r} is not a derived index tensor of a CSRLayout ({_INDEX_NAMES[2:]})")
            self._derived[n] = None
        return self

    # construction ----------------------------------------------------------------------------
    @classmethod
    def _from_sorted_keys(cls, keys, shape, device=None):
        """Layout of the row-major flat positions ``keys`` (int64, sorted, unique)."""
        out_f, in_f = shape
        keys = keys.to(device) if device is not None else keys
        rows = torch.div(keys, max(in_f, 1), rounding_mode="floor")
        row_ptr = torch.zeros(out_f + 1, dtype=torch.int64, device=keys.device)
        row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=out_f), 0)
        cols = (keys - rows * in_f).to(torch.int32)
        return cls(row_ptr.to(torch.int32), cols, shape, validate=False)

    @classmethod
    def from_mask(cls, mask):
        """Layout of the True entries of a bool [out, in] mask."""
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f"mask must be a 2-D bool tensor, got {mask.dtype} {tuple(mask.shape)}")
        return cls._from_sorted_keys(mask.reshape(-1).nonzero().squeeze(1), tuple(mask.shape))

    @classmethod
    def from_dense(cls, weight):
        """Layout of the nonzero entries of a dense [out, in] ``weight``."""
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
        return cls.from_mask(weight != 0)

    @classmethod
    def random(cls, shape, density, generator=None, device=None):
        """A layout with round(density * out * in) positions chosen uniformly at random."""
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")
        shape = tuple(int(s) for s in shape)
        total = shape[0] * shape[1]
        keys = torch.randperm(total, generator=generator)[: round(density * total)].sort().values
        return cls._from_sorted_keys(keys, shape, device)

    # topology changes --------------------------------------------------------------------------
    def keys(self):
        """int64 [nnz] row-major flat positions (row * in + col), sorted."""
        return _flat_keys(self._rows(), self.col_idx, self.shape[1])

    def _rows(self):
        """row_idx, kept if it is, else computed for this use only."""
        rows = self._derived["row_idx"]
        return rows if rows is not None else rows_of(self.row_ptr, self.nnz)

    def update(self, keep, grow):
        """New layout after dropping and growing entries, and ``src`` for repacking values.

        keep: bool [nnz] (False = drop); grow: int64 flat positions (row * in + col) not currently active.
        Returns (layout, src) with src [new nnz] int64: the old index of each new entry, -1 for grown ones.
        Cost: O(nnz) merges plus sorting ``grow``; no dense matrix is built.
        """
        keep = torch.as_tensor(keep, device=self.device)
        if keep.dtype != torch.bool or keep.shape != (self.nnz,):
            raise ValueError(f"keep must be bool [{self.nnz}], got {keep.dtype} {tuple(keep.shape)}")
        out_f, in_f = self.shape
        grow = torch.as_tensor(grow, device=self.device).long().reshape(-1)
        if grow.numel() > 1 and not bool((grow[1:] > grow[:-1]).all()):
            grow = grow.sort().values
        if self.device.type == "cpu" and _extension.AVAILABLE:  # one merge pass in C++, which also validates
            try:
                *index, src = torch.ops.sparsecl.csr_update(self.row_ptr, self.col_idx, in_f, keep.contiguous(),
                                                            grow.contiguous())
            except RuntimeError as exc:
                raise ValueError(f"CSRLayout.update: {str(exc).splitlines()[0]}") from None
            return CSRLayout(index[0], index[1], self.shape, validate=False, _derived=tuple(index[2:])), src
        if grow.numel():
            if int(grow[0]) < 0 or int(grow[-1]) >= out_f * in_f:
                raise ValueError(f"grow has positions outside [0, {out_f * in_f})")
            if bool((grow[1:] == grow[:-1]).any()):
                raise ValueError("grow has duplicate positions")
        if grow.numel() and self.nnz:
            old_keys = self.keys()
            hit = torch.searchsorted(old_keys, grow).clamp_max(self.nnz - 1)
            if bool((old_keys[hit] == grow).any()):
                raise ValueError("grow contains positions that are already active")
        return self._update_torch(keep, grow)

    def _update_torch(self, keep, grow):
        """``update`` in torch ops (any device; also the reference for the C++ merge). Inputs validated."""
        out_f, in_f = self.shape
        old_keys = self.keys()
        kept_idx = keep.nonzero().squeeze(1)
        pos_k, pos_g = _merge_positions(old_keys.index_select(0, kept_idx), grow)
        n_new = kept_idx.numel() + grow.numel()
        dev = self.device
        src = torch.full((n_new,), -1, dtype=torch.int64, device=dev)
        src.index_copy_(0, pos_k, kept_idx)
        new_keys = torch.empty(n_new, dtype=torch.int64, device=dev)
        new_keys.index_copy_(0, pos_k, old_keys.index_select(0, kept_idx))
        new_keys.index_copy_(0, pos_g, grow)
        rows = torch.div(new_keys, max(in_f, 1), rounding_mode="floor")
        cols = new_keys - rows * in_f
        # rows are sorted: offsets by binary search (cheaper than a histogram over nnz)
        row_ptr = torch.searchsorted(rows, torch.arange(out_f + 1, device=dev))
        # transposed order: merge the surviving transposed entries with the grown ones in (col, row) order
        t_old = self.t_perm.long()
        t_kept = t_old.masked_select(keep.index_select(0, t_old))
        new_of_old = torch.full((self.nnz,), -1, dtype=torch.int64, device=dev)
        new_of_old.index_copy_(0, kept_idx, pos_k)
        g_rows = torch.div(grow, max(in_f, 1), rounding_mode="floor")
        g_tkeys = (grow - g_rows * in_f) * out_f + g_rows
        g_order = torch.argsort(g_tkeys)
        k_tkeys = (self.col_idx.index_select(0, t_kept).long() * out_f
                   + self.row_idx.index_select(0, t_kept).long())
        tpos_k, tpos_g = _merge_positions(k_tkeys, g_tkeys.index_select(0, g_order))
        t_perm = torch.empty(n_new, dtype=torch.int64, device=dev)
        t_perm.index_copy_(0, tpos_k, new_of_old.index_select(0, t_kept))
        t_perm.index_copy_(0, tpos_g, pos_g.index_select(0, g_order))
        t_row_ptr = torch.searchsorted(cols.index_select(0, t_perm), torch.arange(in_f + 1, device=dev))
        i32 = torch.int32
        layout = CSRLayout(row_ptr.to(i32), cols.to(i32), self.shape, validate=False,
                           _derived=(rows.to(i32), t_row_ptr.to(i32), rows.index_select(0, t_perm).to(i32),
                                     t_perm.to(i32)))
        return layout, src

    def with_topology(self, new_mask):
        """(layout, src) for a bool [out, in] ``new_mask``; see ``update``. One pass over the mask."""
        new_mask = torch.as_tensor(new_mask, device=self.device)
        if new_mask.dtype != torch.bool or tuple(new_mask.shape) != self.shape:
            raise ValueError(f"new_mask must be bool {self.shape}, got {new_mask.dtype} {tuple(new_mask.shape)}")
        if self.device.type == "cpu" and _extension.AVAILABLE:
            keep, grow = torch.ops.sparsecl.csr_mask_delta(self.row_ptr, self.col_idx, new_mask)
            return self.update(keep, grow)
        flat = new_mask.reshape(-1)
        old_keys = self.keys()
        keep = flat.index_select(0, old_keys)
        fresh = flat.clone()
        fresh.index_fill_(0, old_keys, False)
        return self.update(keep, fresh.nonzero().squeeze(1))

    # queries ---------------------------------------------------------------------------------
    @property
    def nnz(self):
        return self.col_idx.numel()

    @property
    def device(self):
        return self.row_ptr.device

    @property
    def density(self):
        total = self.shape[0] * self.shape[1]
        return self.nnz / total if total else 0.0

    def index_tensors(self):
        return {n: getattr(self, n) for n in _INDEX_NAMES}

    def to(self, device):
        t = {n: v.to(device) for n, v in self.index_tensors().items()}
        return CSRLayout(t["row_ptr"], t["col_idx"], self.shape, validate=False,
                         _derived=(t["row_idx"], t["t_row_ptr"], t["t_col_idx"], t["t_perm"]))

    # flat row-major keys and index_fill_/index_copy/index_select: several times faster than a 2-D index_put
    def mask(self):
        """Bool [out, in]: True at the active entries."""
        m = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=self.device)
        return m.index_fill_(0, self.keys(), True).view(self.shape)

    def to_dense(self, values):
        """Dense [out, in] weight from ``values`` [nnz] (differentiable in values)."""
        self.check_values(values)
        w = values.new_zeros(self.shape[0] * self.shape[1])
        return w.index_copy_(0, self.keys(), values).view(self.shape)

    def values_from_dense(self, weight):
        """Values [nnz] of a dense [out, in] ``weight`` at this layout's entries."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != layout shape {self.shape}")
        return entries_at(weight, self._rows(), self.col_idx)

    def check_values(self, values):
        if values.dim() != 1 or values.shape[0] != self.nnz:
            raise ValueError(f"values must be [{self.nnz}] for this layout, got {tuple(values.shape)}")

    def __repr__(self):
        return f"CSRLayout(shape={self.shape}, nnz={self.nnz}, density={self.density:.3f})"


from .formats_union import UnionLayout  # noqa: E402  (it builds on CSRLayout)
from .formats_compact import CompactCSR, column_dtype, pack_bits, unpack_bits  # noqa: E402
