import pytest
import torch

from sparsecl.checkpoint import CheckpointError, load_checkpoint, pack_bool, save_checkpoint, unpack_bool


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (13, 5), (3, 4, 9)])
def test_pack_bool_roundtrip(seed, shape):
    m = torch.rand(shape) > 0.5
    p = pack_bool(m)
    assert p["packed_bool"].dtype == torch.uint8 and p["packed_bool"].numel() == -(-m.numel() // 8)
    assert torch.equal(unpack_bool(p), m)


def _state():
    return {"masks": [torch.rand(33, 17) > 0.7, torch.rand(5) > 0.5], "w": torch.randn(9),
            "owner": torch.randint(0, 6, (33, 17), dtype=torch.uint8), "meta": {"task": 3, "s": "x"},
            "rng": torch.get_rng_state()}


def test_roundtrip_is_exact_and_weights_only_loadable(tmp_path, seed):
    s = _state()
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, s)
    torch.load(path, weights_only=True)  # the outer file
    r = load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(r["masks"], s["masks"]))
    assert torch.equal(r["w"], s["w"]) and torch.equal(r["owner"], s["owner"]) and r["meta"] == s["meta"]
    assert r["owner"].dtype == torch.uint8


def test_masks_are_bit_packed_on_disk(tmp_path):
    big = {"m": torch.ones(4096, 1024, dtype=torch.bool)}
    path = tmp_path / "c.pt"
    save_checkpoint(str(path), big)
    assert path.stat().st_size < 4096 * 1024 / 8 * 1.1


def test_truncated_and_bit_flipped_files_are_detected(tmp_path, seed):
    path = tmp_path / "c.pt"
    save_checkpoint(str(path), _state())
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        (tmp_path / "t.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(str(tmp_path / "t.pt"))
    # flip one bit inside the payload: the checksum catches it (or the container does)
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        pos = int(torch.randint(len(data) // 4, 3 * len(data) // 4, (1,), generator=g))
        b = bytearray(data)
        b[pos] ^= 1 << int(torch.randint(0, 8, (1,), generator=g))
        (tmp_path / "f.pt").write_bytes(bytes(b))
        with pytest.raises(CheckpointError):
            load_checkpoint(str(tmp_path / "f.pt"))


def test_foreign_file_is_rejected(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(str(tmp_path / "x.pt"))
