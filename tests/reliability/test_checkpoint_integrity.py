"""Every truncation and every single-bit flip of a checkpoint file is detected (CheckpointError with a clear
message), for the continual checkpoint and the multitask model.pt; both load with torch.load(weights_only=True).
Deterministic and exhaustive on a small file; the digest is checked before any byte is parsed."""
import json
import os
import random

import pytest
import torch

from sparsecl.continual.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, seal, unseal

KINDS = ["sparsecl-continual-checkpoint", "sparsecl-multitask-run"]


def _state():
    g = torch.Generator().manual_seed(0)
    return {"masks": [torch.rand(9, 7, generator=g) > 0.5], "w": torch.randn(5, generator=g),
            "owner": torch.randint(0, 4, (9, 7), generator=g, dtype=torch.uint8), "meta": {"t": 1, "k": (0.5, 1.0)},
            "table": {(0.5, 1.0): {"metric": 0.25}}, "rng": torch.get_rng_state()[:16]}


def _same(a, b):
    return (all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"])) and torch.equal(a["w"], b["w"])
            and torch.equal(a["owner"], b["owner"]) and a["meta"] == b["meta"] and a["table"] == b["table"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_truncation_and_every_bit_flip_is_detected(tmp_path, kind):
    path, bad = str(tmp_path / "c.pt"), str(tmp_path / "bad.pt")
    save_checkpoint(path, _state(), kind=kind)
    data = open(path, "rb").read()
    assert _same(load_checkpoint(path, kind=kind), _state())
    assert torch.load(path, weights_only=True)["format"] == kind  # plain torch.load, weights_only
    # exhaustive on the bytes (``unseal`` is load_checkpoint's first step; writing 30k files is slow on CI),
    # then a seeded sample through load_checkpoint and a real file
    for cut in range(len(data)):
        with pytest.raises(CheckpointError, match="truncated|checksum"):
            unseal(bad, data[:cut], kind)
    for pos in range(len(data)):  # all 8 bits of every byte: header, pickles, payload, zip directory, digest
        for bit in range(8):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            with pytest.raises(CheckpointError, match="checksum|corrupted"):
                unseal(bad, bytes(b), kind)
    rng = random.Random(1)
    for pos in rng.sample(range(len(data)), 150):
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        for content in (bytes(b), data[:pos]):
            with open(bad, "wb") as f:
                f.write(content)
            with pytest.raises(CheckpointError, match="truncated|checksum|corrupted"):
                load_checkpoint(bad, kind=kind)
    with open(bad, "wb") as f:
        f.write(data + b"\0")  # appended bytes
    with pytest.raises(CheckpointError):
        load_checkpoint(bad, kind=kind)


def test_flips_behind_a_valid_digest_raise_checkpoint_error_or_load_the_same_state(tmp_path):
    """Defence in depth: a corrupted archive re-sealed with a matching digest (a bug, not a disk error) still
    never loads as a different state or escapes as another exception type; sampled, seeded positions."""
    state = _state()
    save_checkpoint(str(tmp_path / "c.pt"), state)
    archive = open(tmp_path / "c.pt", "rb").read()[:-82] + b"\0\0"  # the bare torch.save archive
    rng = random.Random(0)
    outcomes = {"error": 0, "same": 0}
    for pos in sorted(rng.sample(range(len(archive) - 22), 150)):
        b = bytearray(archive)
        b[pos] ^= 1 << rng.randrange(8)
        with open(tmp_path / "r.pt", "wb") as f:
            f.write(seal(bytes(b)))
        try:
            got = load_checkpoint(str(tmp_path / "r.pt"))
        except CheckpointError:
            outcomes["error"] += 1
            continue
        assert _same(got, state), f"a flip at byte {pos} loaded a different state"
        outcomes["same"] += 1
    assert outcomes["error"] > 0


def test_foreign_and_wrong_kind_files_are_rejected(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(str(tmp_path / "x.pt"))
    save_checkpoint(str(tmp_path / "m.pt"), {"a": 1}, kind="sparsecl-multitask-run")
    with pytest.raises(CheckpointError, match="not a sparsecl-continual-checkpoint"):
        load_checkpoint(str(tmp_path / "m.pt"))
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "e.pt"))


def test_multitask_model_pt_is_verified_on_load(tmp_path):
    pytest.importorskip("sparsecl.nn").SlimmableConv2d
    from sparsecl.cli import main
    from sparsecl.multitask.cli import load_run

    out = str(tmp_path / "run")
    torch.set_num_threads(1)
    assert main(["multitask", "train", "--out", out, "--no-progress", "steps=2", "n_train=16", "n_val=8",
                 "n_test=8", "size=16", "batch_size=8", "enc_channels=[4,8,8]", "dec_channels=8", "widths=[0.5,1.0]",
                 "prefs_per_budget=2", "latency_reps=1", "recal_batches=1", "n_queries=20"]) == 0
    path = os.path.join(out, "model.pt")
    torch.load(path, weights_only=True)
    model, ck = load_run(out)
    assert json.loads(json.dumps(ck["config"]))["steps"] == 2
    data = bytearray(open(path, "rb").read())
    data[len(data) // 3] ^= 4
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_run(out)
