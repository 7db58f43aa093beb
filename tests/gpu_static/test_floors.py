"""bench/floors.py: the roofline floors cover every GPU op at its bar shape and add up by hand."""
import pytest

from bench import floors

OPS = {"bsr_linear", "csr_linear", "masked_linear", "bsr_conv2d", "csr_conv2d", "prune_regrow", "slimmable_linear"}


def test_every_op_has_a_floor_at_its_bar_shape_on_both_cards():
    for card in ("H100", "H200"):
        rows = floors.table(card)
        assert OPS <= {r["op"] for r in rows}
        for r in rows:
            parts = [r["compute_ms"], r["hbm_ms"], r["l2_ms"]]
            assert r["floor_ms"] == max(parts) > 0 and r[f"{r['bound']}_ms"] == r["floor_ms"]


def test_bsr_linear_counts_by_hand():
    w = floors.bsr_linear(T=4096, in_f=4096, out_f=11008, density=0.1, block=64, block_t=256)
    nnz = 0.1 * 4096 * 11008
    assert w.flops == pytest.approx(2 * 4096 * nnz)
    assert w.l2_bytes == pytest.approx(2 * 4096 * nnz * (1 / 256 + 1 / 64))
    assert w.hbm_bytes == pytest.approx(2 * (4096 * 4096 + nnz + 4096 * 11008) + 4 * nnz / 64 ** 2)
    f = w.floor("H100")
    assert f["bound"] == "l2" and f["floor_ms"] == pytest.approx(w.l2_bytes / 9.0e12 * 1e3)
    assert floors.prune_regrow(10).floor("H200")["hbm_ms"] < floors.prune_regrow(10).floor("H100")["hbm_ms"]


def test_the_b64_bar_question():
    ok64, floor64, bar = floors.bar_reachable(block=64)
    ok128, floor128, _ = floors.bar_reachable(block=128)
    assert bar == pytest.approx(1.25 * 0.1 * 0.580)
    assert not ok64 and ok128 and floor128 < bar < floor64
    # a measured L2 ceiling can change the answer: it is an input, not a constant
    assert floors.bar_reachable(block=64, peaks={"l2": 12e12})[0]


def test_cli_prints_the_table_and_the_answer(capsys):
    floors.main([])
    out = capsys.readouterr().out
    assert "bsr_linear B=64 BLOCK_T=256 cluster=1" in out and "NOT reachable" in out and "prune_regrow" in out
