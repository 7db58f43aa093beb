"""Fuzzing sparsecl.continual.checkpoint.load_checkpoint: files truncated at random offsets, random bit
flips, random bytes, and valid torch files of the wrong structure. Contract: CheckpointError with a
message (FileNotFoundError only for a missing file), or (for a flip that hits no data, e.g. zip padding)
exactly the saved state; never another exception, a hang, or a different state."""
import io
import os
import tempfile

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecl.continual.checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, save_checkpoint

from ._strategies import fuzz_settings

_DIR = tempfile.mkdtemp(prefix="sparsecl-fuzz-ckpt-")
STATE = {"model": {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "mask": torch.eye(3, 5, dtype=torch.bool)},
         "step": 7, "names": ["a", "b"], "opt": [torch.ones(2, dtype=torch.float64), None]}
_GOOD = os.path.join(_DIR, "good.pt")
save_checkpoint(_GOOD, STATE)
with open(_GOOD, "rb") as f:
    GOOD = f.read()


def _load_bytes(data):
    path = os.path.join(_DIR, "fuzz.pt")
    with open(path, "wb") as f:
        f.write(data)
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        assert str(exc).strip()
        return None


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _loads_same_or_rejects(data):
    state = _load_bytes(data)
    assert state is None or _equal(state, STATE), "a corrupted checkpoint loaded as a different state"


@fuzz_settings(100)
@given(cut=st.integers(0, len(GOOD) - 1))
def test_truncated(cut):
    assert _load_bytes(GOOD[:cut]) is None, "a truncated checkpoint must be rejected"


@fuzz_settings(100)
@given(flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flips(flips):
    data = bytearray(GOOD)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    _loads_same_or_rejects(bytes(data))


@fuzz_settings(100)
@given(data=st.one_of(st.binary(max_size=2048), st.binary(max_size=64).map(lambda b: GOOD[:30] + b)))
def test_random_bytes(data):
    assert _load_bytes(data) is None


leaf = st.one_of(st.none(), st.integers(), st.text(max_size=8), st.floats(), st.just(torch.zeros(3, dtype=torch.uint8)),
                 st.just(torch.ones(2, 2)), st.just(FORMAT), st.just(VERSION), st.just(torch.tensor([1.5])))
trees = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
    st.sampled_from(["format", "version", "sha256", "payload", "packed_bool", "shape", "x"]), c, max_size=4)),
    max_leaves=8)


def _inner_file(inner):
    """A well-formed outer file (right format, version and checksum) around ``inner`` torch bytes."""
    import hashlib
    payload = torch.frombuffer(bytearray(inner), dtype=torch.uint8) if inner else torch.zeros(0, dtype=torch.uint8)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(inner).hexdigest(), "payload": payload},
               buf)
    return buf.getvalue()


@fuzz_settings(100)
@given(tree=trees, wrap=st.sampled_from(["outer", "inner", "outer_fields"]))
@example(tree={"packed_bool": torch.zeros(1, dtype=torch.uint8), "shape": "x"}, wrap="inner")
@example(tree={"format": FORMAT, "version": VERSION, "payload": 5}, wrap="outer")
@example(tree={"version": torch.zeros(3, dtype=torch.uint8), "format": FORMAT}, wrap="outer")  # ambiguous bool
@example(tree={"shape": torch.zeros(3, dtype=torch.uint8), "packed_bool": None}, wrap="inner")  # AttributeError
def test_valid_torch_file_wrong_structure(tree, wrap):
    buf = io.BytesIO()
    if wrap == "outer_fields" and isinstance(tree, dict):
        tree = {**tree, "format": FORMAT, "version": VERSION}
    torch.save(tree, buf)
    data = buf.getvalue() if wrap != "inner" else _inner_file(buf.getvalue())
    state = _load_bytes(data)
    if state is not None:  # a structurally valid inner state round-trips: it must be what was saved
        assert wrap == "inner"
