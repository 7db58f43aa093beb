"""``CompactCSR``: a sparse matrix stored in the fewest bytes, and bit-packed bool masks (importable from
``sparsecl.formats``).

A CompactCSR keeps values [nnz], ``row_ptr`` int32 [rows + 1], column indices in 16 bits when every column
fits (``cols <= 65,536``; stored as int16 and read back as ``col & 0xFFFF``, since torch has few uint16 ops)
or int32 otherwise, and optionally one ``tag`` byte per entry (e.g. the task that owns it). Nothing derived
(no row index, no transposed index) is stored: ``layout()`` builds a full ``CSRLayout`` when one is needed.
Per entry that is 4 + 2 (+ 1) bytes for fp32 values, against 4 + 4 * 5 for a CSRLayout with its values.
"""
import torch

from .formats import CSRLayout, _merge_positions, rows_of

NARROW_MAX_COLS = 2 ** 16  # columns 0..65535 fit 16 bits


def column_dtype(n_cols):
    """The dtype CompactCSR stores column indices in for a matrix of ``n_cols`` columns."""
    return torch.int16 if n_cols <= NARROW_MAX_COLS else torch.int32


class CompactCSR:
    """values [nnz] + row_ptr int32 [rows + 1] + col_idx (int16 when ``cols <= 65536``, else int32) + tag uint8
    [nnz] or None, over a [rows, cols] matrix; entries in row-major order. Immutable: changes return a new one.
    """

    def __init__(self, values, row_ptr, col_idx, shape, tag=None, validate=True):
        rows, cols = (int(s) for s in shape)
        self.shape = (rows, cols)
        if validate:
            if col_idx.dtype != column_dtype(cols):
                raise ValueError(f"col_idx must be {column_dtype(cols)} for {cols} columns, got {col_idx.dtype}")
            if row_ptr.dtype != torch.int32 or row_ptr.shape != (rows + 1,):
                raise ValueError(f"row_ptr must be int32 [{rows + 1}], got {row_ptr.dtype} {tuple(row_ptr.shape)}")
            if values.dim() != 1 or values.shape != col_idx.shape:
                raise ValueError(f"values {tuple(values.shape)} and col_idx {tuple(col_idx.shape)} must be [nnz]")
            if tag is not None and (tag.dtype != torch.uint8 or tag.shape != col_idx.shape):
                raise ValueError(f"tag must be uint8 [{col_idx.numel()}], got {tag.dtype} {tuple(tag.shape)}")
            CSRLayout(row_ptr, self._widen(col_idx), self.shape)  # validates the index
        self.values, self.row_ptr, self.col_idx, self.tag = values, row_ptr, col_idx, tag

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_keys(cls, keys, values, shape, tag=None):
        """From sorted unique int64 row-major positions ``keys`` [nnz], ``values`` [nnz] and ``tag`` (uint8 [nnz],
        an int for every entry, or None)."""
        rows, cols = (int(s) for s in shape)
        keys = keys.long()
        r = torch.div(keys, max(cols, 1), rounding_mode="floor")
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64, device=keys.device)
        row_ptr[1:] = torch.cumsum(torch.bincount(r, minlength=rows), 0)
        col = (keys - r * cols).to(torch.int32).to(column_dtype(cols))
        if isinstance(tag, int):
            tag = torch.full((keys.numel(),), tag, dtype=torch.uint8, device=keys.device)
        return cls(values, row_ptr.to(torch.int32), col, (rows, cols), tag, validate=False)

    @classmethod
    def from_layout(cls, layout, values, tag=None):
        """From a CSRLayout and its values [nnz] (``tag`` as in ``from_keys``)."""
        col = layout.col_idx.to(column_dtype(layout.shape[1]))
        if isinstance(tag, int):
            tag = torch.full((layout.nnz,), tag, dtype=torch.uint8, device=layout.device)
        return cls(values, layout.row_ptr.to(torch.int32), col, layout.shape, tag, validate=False)

    @classmethod
    def empty(cls, shape, dtype=None, device=None, tagged=True):
        rows, cols = (int(s) for s in shape)
        return cls(torch.zeros(0, dtype=dtype, device=device), torch.zeros(rows + 1, dtype=torch.int32, device=device),
                   torch.zeros(0, dtype=column_dtype(cols), device=device), (rows, cols),
                   torch.zeros(0, dtype=torch.uint8, device=device) if tagged else None, validate=False)

    # queries ---------------------------------------------------------------------------------
    @property
    def nnz(self):
        return self.col_idx.numel()

    @property
    def device(self):
        return self.row_ptr.device

    @staticmethod
    def _widen(col_idx):
        return col_idx.to(torch.int32) & 0xFFFF if col_idx.dtype == torch.int16 else col_idx

    def cols(self):
        """int32 [nnz] column of each entry."""
        return self._widen(self.col_idx)

    def keys(self):
        """int64 [nnz] sorted row-major positions row * cols + col."""
        return torch.add(self.cols(), rows_of(self.row_ptr, self.nnz).long(), alpha=self.shape[1])

    def layout(self):
        """A full CSRLayout of the entries (int32 index; its derived index is computed on first use)."""
        return CSRLayout(self.row_ptr, self.cols(), self.shape, validate=False)

    def mask(self, tag_max=None):
        """bool [rows, cols]: True at the entries (those with ``tag <= tag_max`` if given)."""
        keys = self.keys()
        if tag_max is not None:
            keys = keys[self.tag <= tag_max]
        m = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=self.device)
        return m.index_fill_(0, keys, True).view(self.shape)

    def to_dense(self, fill_tag=False):
        """Dense [rows, cols] of the values (or, ``fill_tag``, of the tags as uint8; 0 off the entries)."""
        src = self.tag if fill_tag else self.values
        out = src.new_zeros(self.shape[0] * self.shape[1])
        return out.index_copy_(0, self.keys(), src).view(self.shape)

    def find(self, keys):
        """int64 [len(keys)]: the entry of each of the sorted positions ``keys``; ValueError if one is absent."""
        keys = keys.long()
        store = self.keys()
        at = torch.searchsorted(store, keys)
        if keys.numel() and (int(at.max()) >= store.numel() or not torch.equal(store[at], keys)):
            raise ValueError("positions asked for are not entries of this CompactCSR")
        return at

    def tensors(self):
        """{"values", "row_ptr", "col_idx", "tag"} (tag only when present): everything this store holds."""
        t = {"values": self.values, "row_ptr": self.row_ptr, "col_idx": self.col_idx}
        if self.tag is not None:
            t["tag"] = self.tag
        return t

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    # changes ---------------------------------------------------------------------------------
    def merge(self, other):
        """A new CompactCSR of the entries of both (disjoint positions; same shape, value dtype and tagging)."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge a {other.shape} CompactCSR into a {self.shape} one")
        if (self.tag is None) != (other.tag is None):
            raise ValueError("both CompactCSRs must be tagged, or neither")
        mine, theirs = self.keys(), other.keys()
        if theirs.numel() and mine.numel():
            hit = torch.searchsorted(mine, theirs).clamp_max(mine.numel() - 1)
            if bool((mine[hit] == theirs).any()):
                raise ValueError("cannot merge CompactCSRs that share positions")
        pos_a, pos_b = _merge_positions(mine, theirs)
        n = mine.numel() + theirs.numel()

        def cat(a, b):
            return a.new_empty(n).index_copy_(0, pos_a, a).index_copy_(0, pos_b, b.to(a))

        keys = cat(mine, theirs)
        tag = cat(self.tag, other.tag) if self.tag is not None else None
        return CompactCSR.from_keys(keys, cat(self.values, other.values), self.shape, tag)

    def __repr__(self):
        return (f"CompactCSR(shape={self.shape}, nnz={self.nnz}, col_idx={self.col_idx.dtype}, "
                f"tagged={self.tag is not None})")


_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask):
    """A bool tensor (any shape, read flat) as uint8 [ceil(n / 8)], MSB first, zero padded."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if not flat.numel():
        return flat
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed, n):
    """The first ``n`` bits of ``pack_bits``'s output, as bool [n]."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() * 8 < n:
        raise ValueError(f"packed must be uint8 [>= {(n + 7) // 8}], got {packed.dtype} {tuple(packed.shape)}")
    return (packed.view(-1, 1) & _BITS.to(packed.device)).ne(0).reshape(-1)[:n]
