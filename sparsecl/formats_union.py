"""``UnionLayout``: one CSR index over the frozen and the trainable part of a weight (importable from
``sparsecl.formats``).

What a union keeps between kernel calls, and nothing more: its CSRLayout's ``row_ptr``/``col_idx`` (the
forward), ``t_row_ptr``/``t_col_idx``/``t_perm`` once a dX pass asked for them (a layer whose input needs no
gradient never does), ``trainable_pos`` (int64, where each trainable value goes in union order: every call
writes the trainable values through it, and index_copy_ takes int64 only, so an int32 copy would cost a
conversion per call, ~5% of a main-job step), the trainable part's ``trainable_rows``/``trainable_cols``
(where dValues is computed; the trainable layout's own tensors when the union is built from it, so not a
copy), and one value buffer in union order (``scratch``). Everything else (the part flags, the frozen positions, the
positions in transposed order, ``row_idx``) is derived when asked for; ``frozen_rows``/``frozen_cols`` are kept
once asked for (a dense pass of ``sparsecl.dispatch`` compares them by identity) until ``forget_frozen_index``.

The frozen values may live in the union itself (``attach_frozen``): its value buffer then holds them (no other
copy needed) and the union ops are called with ``frozen_values=None``.
"""
import torch

from .formats import CSRLayout


class UnionLayout:
    """One CSR index over two disjoint parts of a [out, in] weight: *frozen* entries (read-only values that
    get no gradient and no optimizer state) and *trainable* entries (values with a gradient), so one kernel
    call computes both (``sparsecl.ops.union_linear`` / ``union_conv2d``). Any split works: all earlier
    tasks' weights plus new ones, or a task mask that reuses some frozen weights.

    ``layout``: CSRLayout over the union; ``trainable``: bool [nnz], True at trainable entries (union CSR
    order; derived). Each part keeps its values in its own row-major order, which is the union's order
    restricted to that part: frozen value k lives at union entry ``frozen_pos[k]``, trainable value k at
    ``trainable_pos[k]``. ``trainable_pos`` (int64) is kept; ``frozen_pos`` and the positions in the
    transposed order (``frozen_pos_t``, ``trainable_pos_t``) are int64 and derived on each access; int32
    ``trainable_rows``/``trainable_cols`` (where dValues is computed) are kept, ``frozen_rows``/``frozen_cols``
    kept once asked for. ``scratch`` holds the union ops' value buffer (derived, never saved), or the frozen
    values given to ``attach_frozen``.
    A topology change (``update``, ``with_trainable_repack``) returns a NEW object: autograd graphs built
    before it keep theirs. It merges sorted index lists (``CSRLayout.update``); the union is never re-sorted.
    """

    def __init__(self, layout, trainable, *, trainable_index=None):
        """``trainable_index``: optional (rows, cols), int32 [n_trainable] each, the trainable entries' rows and
        columns in their order (e.g. the trainable part's CSRLayout ``row_idx``/``col_idx``), kept by reference."""
        if not isinstance(layout, CSRLayout):
            raise TypeError(f"layout must be a CSRLayout, got {type(layout).__name__}")
        trainable = torch.as_tensor(trainable, device=layout.device)
        if trainable.dtype != torch.bool or tuple(trainable.shape) != (layout.nnz,):
            raise ValueError(f"trainable must be bool [{layout.nnz}] (one flag per union entry), got "
                             f"{trainable.dtype} {tuple(trainable.shape)}")
        self.layout = layout
        pos = trainable.nonzero().squeeze(1)
        self.trainable_pos = pos
        if trainable_index is None:
            rows = layout.row_idx.index_select(0, pos)
            trainable_index = (rows, layout.col_idx.index_select(0, pos))
        rows, cols = trainable_index
        if rows.shape != (pos.numel(),) or cols.shape != (pos.numel(),):
            raise ValueError(f"trainable_index must be two [{pos.numel()}] tensors (rows, cols), got "
                             f"{tuple(rows.shape)} and {tuple(cols.shape)}")
        self.trainable_rows, self.trainable_cols = rows, cols
        layout.drop_derived("row_idx", "t_row_ptr", "t_col_idx", "t_perm")  # recomputed by the first dX
        self._frozen_index = None
        self.scratch = {}
        self._resident = None  # the attached frozen values' dtype, or None (see attach_frozen)

    @classmethod
    def from_parts(cls, frozen, trainable):
        """The union of two disjoint CSRLayouts of one shape (the trainable index merged into the frozen one).
        The union keeps the trainable layout's ``row_idx``/``col_idx`` as its ``trainable_rows``/``_cols``."""
        if not (isinstance(frozen, CSRLayout) and isinstance(trainable, CSRLayout)):
            raise TypeError("frozen and trainable must be CSRLayouts")
        if frozen.shape != trainable.shape:
            raise ValueError(f"frozen {frozen.shape} and trainable {trainable.shape} layouts differ in shape")
        keep_all = torch.ones(frozen.nnz, dtype=torch.bool, device=frozen.device)
        try:
            layout, src = frozen.update(keep_all, trainable.keys())
        except ValueError as exc:
            raise ValueError(f"frozen and trainable parts must be disjoint: {exc}") from None
        return cls(layout, src < 0, trainable_index=(trainable.row_idx, trainable.col_idx))

    @classmethod
    def from_masks(cls, frozen_mask, trainable_mask):
        """The union of two disjoint bool [out, in] masks."""
        return cls.from_parts(CSRLayout.from_mask(frozen_mask), CSRLayout.from_mask(trainable_mask))

    # queries ---------------------------------------------------------------------------------
    @property
    def shape(self):
        return self.layout.shape

    @property
    def device(self):
        return self.layout.device

    @property
    def nnz(self):
        return self.layout.nnz

    @property
    def n_frozen(self):
        return self.nnz - self.n_trainable

    @property
    def n_trainable(self):
        return self.trainable_pos.numel()

    @property
    def trainable(self):
        """bool [nnz]: True at the trainable entries (derived)."""
        flags = torch.zeros(self.nnz, dtype=torch.bool, device=self.device)
        return flags.index_fill_(0, self.trainable_pos, True)

    @property
    def frozen_pos(self):
        """int64 [n_frozen]: the union entry of each frozen value (derived)."""
        return (~self.trainable).nonzero().squeeze(1)

    def _transposed(self, pos):
        t_perm = self.layout.t_perm.long()
        t_of = torch.empty_like(t_perm).index_copy_(0, t_perm, torch.arange(t_perm.numel(), device=t_perm.device))
        return t_of.index_select(0, pos)

    @property
    def trainable_pos_t(self):
        """int64 [n_trainable]: each trainable value's entry in the transposed order (derived)."""
        return self._transposed(self.trainable_pos)

    @property
    def frozen_pos_t(self):
        """int64 [n_frozen]: each frozen value's entry in the transposed order (derived)."""
        return self._transposed(self.frozen_pos)

    def _frozen_rows_cols(self):
        if self._frozen_index is None:
            pos = self.frozen_pos
            self._frozen_index = (self.layout.row_idx.index_select(0, pos), self.layout.col_idx.index_select(0, pos))
            self.layout.drop_derived("row_idx")
        return self._frozen_index

    def forget_frozen_index(self):
        """Free ``frozen_rows``/``frozen_cols`` (recomputed when next asked for)."""
        self._frozen_index = None

    frozen_rows = property(lambda self: self._frozen_rows_cols()[0], doc="int32 [n_frozen] (kept once asked for)")
    frozen_cols = property(lambda self: self._frozen_rows_cols()[1], doc="int32 [n_frozen] (kept once asked for)")

    def _part(self, pos):
        keys = self.layout.keys().index_select(0, pos)
        return CSRLayout._from_sorted_keys(keys, self.shape)

    def frozen_layout(self):
        """CSRLayout of the frozen entries (their values' order)."""
        return self._part(self.frozen_pos)

    def trainable_layout(self):
        """CSRLayout of the trainable entries (their values' order)."""
        return self._part(self.trainable_pos)

    def mask(self):
        """Bool [out, in]: True at every union entry."""
        return self.layout.mask()

    def to(self, device):
        new = UnionLayout(self.layout.to(device), self.trainable.to(device))
        if self._resident is not None:
            new.attach_frozen(self.frozen_values().to(device))
        return new

    def tensors(self):
        """Every tensor this union keeps between kernel calls (for memory accounting): its layout's index
        (with the derived tensors it keeps), positions, part indices and value buffers."""
        lay = self.layout
        kept = [lay.row_ptr, lay.col_idx, *(t for t in lay._derived.values() if t is not None), self.trainable_pos,
                self.trainable_rows, self.trainable_cols, *(self._frozen_index or ())]
        return kept + [entry[2] for entry in self.scratch.values()]

    # values ------------------------------------------------------------------------------------
    def attach_frozen(self, frozen_values):
        """Keep the frozen values [n_frozen] (their row-major order) in this union's value buffer, so the
        caller need not keep them: the union ops then take ``frozen_values=None``. Returns self."""
        if not isinstance(frozen_values, torch.Tensor) or frozen_values.shape != (self.n_frozen,):
            raise ValueError(f"frozen_values must be [{self.n_frozen}] for this union, got "
                             f"{tuple(getattr(frozen_values, 'shape', ()))}")
        buf = frozen_values.new_zeros(self.nnz).index_copy_(0, self.frozen_pos, frozen_values.detach())
        self.scratch = {frozen_values.dtype: (None, None, buf)}
        self._resident = frozen_values.dtype
        return self

    @property
    def holds_frozen(self):
        """Whether the frozen values live in this union (``attach_frozen``)."""
        return self._resident is not None

    def frozen_values(self):
        """The attached frozen values [n_frozen] (a new tensor); ValueError if none are attached."""
        if self._resident is None:
            raise ValueError("this union holds no frozen values (attach_frozen); pass frozen_values to the op")
        return self.scratch[self._resident][2].index_select(0, self.frozen_pos)

    def check_values(self, frozen_values, trainable_values):
        """ValueError unless the values fit this union (``frozen_values`` None: it must hold its own)."""
        if frozen_values is None and self._resident is None:
            raise ValueError("this union holds no frozen values (attach_frozen); pass frozen_values to the op")
        for name, v, n in (("frozen_values", frozen_values, self.n_frozen),
                           ("trainable_values", trainable_values, self.n_trainable)):
            if v is None:
                continue
            if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != n:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{name} must be [{n}] for this union, got {shape}")
        if frozen_values is not None and frozen_values.dtype != trainable_values.dtype:
            raise ValueError(f"frozen_values ({frozen_values.dtype}) and trainable_values ({trainable_values.dtype}) "
                             "must have one dtype")

    def values(self, frozen_values, trainable_values, transposed=False):
        """Union values [nnz] in CSR order (or the transposed index's order): a new tensor, differentiable.
        ``frozen_values`` None: the attached ones."""
        if frozen_values is None:
            frozen_values = self.frozen_values().to(trainable_values.dtype)
        self.check_values(frozen_values, trainable_values)
        out = trainable_values.new_empty(self.nnz)
        out = out.index_copy(0, self.frozen_pos, frozen_values).index_copy(0, self.trainable_pos,
                                                                          trainable_values)
        return out.index_select(0, self.layout.t_perm.long()) if transposed else out

    def to_dense(self, frozen_values, trainable_values):
        """Dense [out, in] weight of both parts (``frozen_values`` None: the attached ones)."""
        return self.layout.to_dense(self.values(frozen_values, trainable_values))

    # topology changes --------------------------------------------------------------------------
    def update(self, keep, grow, grow_trainable, *, trainable_index=None):
        """The union after dropping and growing entries of either part.

        keep: bool [nnz] over union entries (False = drop); grow: int64 flat positions (row * in + col) not in
        the union; grow_trainable: bool [len(grow)], the part each grown entry joins. A kept entry stays in its
        part. Returns (union, frozen_src, trainable_src): the new union and, per part, each new entry's index
        in the old part's values, or -1 for a grown one (``repack_values_`` takes them). Attached frozen values
        move with their entries (a grown frozen entry is then refused: attach the new values instead).
        ``trainable_index``: as in the constructor, for the new union.
        """
        grow = torch.as_tensor(grow, device=self.device).long().reshape(-1)
        grow_trainable = torch.as_tensor(grow_trainable, device=self.device).reshape(-1)
        if grow_trainable.dtype != torch.bool or grow_trainable.numel() != grow.numel():
            raise ValueError(f"grow_trainable must be bool [{grow.numel()}] (one flag per grown position), got "
                             f"{grow_trainable.dtype} {tuple(grow_trainable.shape)}")
        if self._resident is not None and not bool(grow_trainable.all()):
            raise ValueError("this union holds its frozen values: grow frozen entries by building a new union and "
                             "attaching their values")
        if grow.numel() > 1 and not bool((grow[1:] > grow[:-1]).all()):
            grow, order = grow.sort()
            grow_trainable = grow_trainable.index_select(0, order)
        layout, src = self.layout.update(keep, grow)
        grown = src < 0
        if self.nnz:
            old = src.clamp(min=0)
            flags = self.trainable
            # an entry's index within its part: the running count of that part's entries before it
            rank_t = flags.long().cumsum(0) - 1
            rank_f = (~flags).long().cumsum(0) - 1
            was_trainable = flags.index_select(0, old)
            part_src = torch.where(was_trainable, rank_t.index_select(0, old), rank_f.index_select(0, old))
        else:  # an empty union: every entry is grown (nothing to gather from)
            was_trainable, part_src = torch.zeros_like(grown), src
        trainable = was_trainable.masked_scatter(grown, grow_trainable)
        part_src = part_src.masked_fill(grown, -1)
        new = UnionLayout(layout, trainable, trainable_index=trainable_index)
        frozen_src = part_src.index_select(0, new.frozen_pos)
        if self._resident is not None:
            new.attach_frozen(self.frozen_values().index_select(0, frozen_src))
        return new, frozen_src, part_src.index_select(0, new.trainable_pos)

    def with_trainable_repack(self, trainable_src, trainable_layout):
        """The union after the trainable part alone was repacked (e.g. ``SparseLinear.set_topology``):
        ``trainable_src`` (new trainable entry -> old one, or -1) and the part's new CSRLayout (whose
        ``row_idx``/``col_idx`` the new union keeps as its ``trainable_rows``/``_cols``)."""
        trainable_src = torch.as_tensor(trainable_src, device=self.device).long()
        if trainable_src.numel() != trainable_layout.nnz:
            raise ValueError(f"trainable_src has {trainable_src.numel()} entries, the trainable layout "
                             f"{trainable_layout.nnz}")
        kept = torch.zeros(self.n_trainable, dtype=torch.bool, device=self.device)
        kept[trainable_src[trainable_src >= 0]] = True
        keep = torch.ones(self.nnz, dtype=torch.bool, device=self.device)
        keep[self.trainable_pos[~kept]] = False
        grow = trainable_layout.keys()[trainable_src < 0]
        index = (trainable_layout.row_idx, trainable_layout.col_idx)
        return self.update(keep, grow, torch.ones_like(grow, dtype=torch.bool), trainable_index=index)[0]

    def __repr__(self):
        return (f"UnionLayout(shape={self.shape}, nnz={self.nnz}, frozen={self.n_frozen}, "
                f"trainable={self.n_trainable})")
