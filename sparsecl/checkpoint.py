"""Atomic, verified checkpoints, shared by the trainers (``sparsecl continual``, ``sparsecl multitask``).

File = ``torch.save({"format", "version", "sha256", "payload"})`` where ``payload`` is a uint8 tensor holding
the ``torch.save`` bytes of the real state, and ``sha256`` its digest. Both levels load with
``torch.load(weights_only=True)``. The zip archive's comment (the file's last 80 bytes, which zip readers
and ``torch.load`` skip) is ``sparsecl-sha256:<hex>``, the digest of every byte before the hex, so any
truncation or bit flip anywhere in the file is detected, including in zip metadata the reader ignores. Bool tensors (masks) are bit-packed 8 per byte; the owner index is
stored as it lives (uint8, one byte per weight). Written with ``sparsecl.io.write_bytes_atomic`` (temp
file, fsync, rename), so a crash leaves either the old or the new checkpoint, never a torn one.
"""
import hashlib
import io

import torch

from .io import write_bytes_atomic

FORMAT = "sparsecl-continual-checkpoint"  # the default kind (the continual trainer's)
VERSION = 2  # 2: whole-file digest in the zip comment
_TRAILER = b"sparsecl-sha256:"
_TRAILER_LEN = len(_TRAILER) + 64
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupted or not a sparsecl checkpoint of the expected kind."""


def pack_bool(t):
    """Bool tensor -> {"packed_bool": uint8 [ceil(n/8)], "shape": list} (MSB first, zero padded)."""
    flat = t.detach().to("cpu", torch.uint8).flatten()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    packed = (flat.view(-1, 8) * _BITS).sum(1, dtype=torch.uint8) if flat.numel() else flat
    return {"packed_bool": packed, "shape": list(t.shape)}


def unpack_bool(d):
    shape = d["shape"]
    n = 1
    for s in shape:
        n *= s
    bits = (d["packed_bool"].view(-1, 1) & _BITS).ne(0).flatten()
    if bits.numel() < n:
        raise CheckpointError(f"packed mask holds {bits.numel()} bits, shape {shape} needs {n}")
    return bits[:n].view(shape)


def _map(obj, fn):
    if isinstance(obj, dict):
        if "packed_bool" in obj and "shape" in obj and len(obj) == 2:
            return fn(obj)
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return fn(obj)


def _pack(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return pack_bool(x) if x.dtype == torch.bool else x
    return x


def _unpack(x):
    return unpack_bool(x) if isinstance(x, dict) else x


def save_checkpoint(path, state, kind=FORMAT):
    """Atomically write ``state`` (nested dicts/lists of tensors and plain values) to ``path``.

    ``kind`` names the file's format (checked by ``load_checkpoint``), e.g. "sparsecl-multitask-run".
    """
    buf = io.BytesIO()
    torch.save(_map(state, _pack), buf)
    payload = buf.getvalue()
    outer = io.BytesIO()
    torch.save({"format": kind, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, outer)
    write_bytes_atomic(path, seal(outer.getvalue()))


def seal(archive):
    """Set the zip comment of ``archive`` (torch.save bytes) to the digest of everything before the hex."""
    if archive[-22:-18] != b"PK\x05\x06" or archive[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save did not end its archive with a comment-less end-of-central-directory record")
    body = archive[:-2] + _TRAILER_LEN.to_bytes(2, "little") + _TRAILER
    return body + hashlib.sha256(body).hexdigest().encode()


def unseal(path, data, kind=FORMAT):
    """Verify the whole-file digest written by ``seal``; returns the bytes (torch.load reads them as they are)."""
    if len(data) < 22 + _TRAILER_LEN or data[-_TRAILER_LEN:-64] != _TRAILER \
            or data[-_TRAILER_LEN - 2:-_TRAILER_LEN] != _TRAILER_LEN.to_bytes(2, "little"):
        raise CheckpointError(f"{path}: no sparsecl checksum at the end of the file ({len(data)} bytes): truncated or "
                              f"corrupted file, or not a {kind} version {VERSION} file")
    stored, digest = data[-64:], hashlib.sha256(data[:-64]).hexdigest().encode()
    if stored != digest:
        raise CheckpointError(f"{path}: checksum mismatch (stored {stored.decode(errors='replace')}, computed "
                              f"{digest.decode()}); the file is corrupted")
    return data


def load_checkpoint(path, map_location="cpu", kind=FORMAT):
    """Load and verify a checkpoint; raises CheckpointError on truncation, bit flips or a foreign file.

    The whole-file digest is checked before any byte is parsed.
    """
    with open(path, "rb") as f:
        data = unseal(path, f.read(), kind)
    try:
        outer = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for torn zip archives
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated or corrupted file?): {exc}") from exc
    if not isinstance(outer, dict) or not isinstance(outer.get("format"), str) or outer["format"] != kind:
        raise CheckpointError(f"{path}: not a {kind} file")
    if not isinstance(outer.get("version"), int) or outer["version"] != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {outer.get('version')}, this sparsecl reads {VERSION}")
    payload = outer.get("payload")
    if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1
            and isinstance(outer.get("sha256"), str)):
        raise CheckpointError(f"{path}: malformed {kind} file (payload must be a uint8 [n] tensor, sha256 a string)")
    payload = payload.numpy().tobytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != outer.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (stored {outer.get('sha256')}, computed {digest}); "
                              "the file is corrupted")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: payload passed its checksum but does not load: {exc}") from exc
    try:
        return _map(state, _unpack)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:  # a malformed packed mask
        raise CheckpointError(f"{path}: payload passed its checksum but holds a malformed packed mask: {exc}") from exc
