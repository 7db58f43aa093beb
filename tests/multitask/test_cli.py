import json
import os
import time

import pytest

from sparsecl.cli import build_parser, main
from sparsecl.multitask.cli import load_config, parse_overrides

from ._helpers import needs_slim, one_thread  # noqa: F401


def test_documented_flags_parse(tmp_path):
    p = build_parser()
    a = p.parse_args(["multitask", "train", "--config", "c.yaml", "--out", "o", "--no-progress", "steps=3", "lr=0.1"])
    assert a.mt_command == "train" and a.config == "c.yaml" and a.out == "o" and a.no_progress
    assert a.overrides == ["steps=3", "lr=0.1"]
    a = p.parse_args(["multitask", "eval", "--run", "r", "n_test=10"])
    assert a.mt_command == "eval" and a.run == "r" and a.overrides == ["n_test=10"]
    a = p.parse_args(["multitask", "search", "--run", "r", "--budget", "1e6", "--prefs", "0.5,0.3,0.2", "--uniform"])
    assert a.budget == 1e6 and a.prefs == "0.5,0.3,0.2" and a.uniform and a.budget_frac is None
    a = p.parse_args(["multitask", "search", "--budget-frac", "0.5", "--prefs", "1,1,1"])
    assert a.budget_frac == 0.5
    assert p.parse_args(["info"]).command == "info"  # untouched commands still parse
    assert p.parse_args(["bench", "--quick"]).quick


def test_config_layers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nwidths: [0.5, 1.0]\nkd_weight: 0.5\n")
    cfg = load_config(str(f), ["steps=9", "root=/data/x"])
    assert cfg["steps"] == 9 and cfg["widths"] == [0.5, 1.0] and cfg["kd_weight"] == 0.5 and cfg["root"] == "/data/x"
    assert parse_overrides(["a=[1, 2]", "b=null"]) == {"a": [1, 2], "b": None}
    with pytest.raises(SystemExit, match="unknown config key"):
        load_config(None, ["stepz=3"])
    with pytest.raises(SystemExit, match="key=value"):
        parse_overrides(["steps"])


@needs_slim
def test_end_to_end_tiny_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    tiny = ["steps=4", "n_train=48", "n_val=24", "n_test=24", "size=16", "batch_size=8", "enc_channels=[4,8,8]",
            "dec_channels=8", "widths=[0.5,1.0]", "prefs_per_budget=6", "latency_reps=1", "recal_batches=2",
            "n_queries=200"]
    t0 = time.perf_counter()
    assert main(["multitask", "train", "--out", out, "--no-progress", *tiny]) == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"tiny run took {elapsed:.1f} s"
    for f in ("metrics.json", "configurations.csv", "controllability.png", "model.pt"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    with open(os.path.join(out, "controllability.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert len(m["configurations"]) == 2 ** 4 and {"seg_mIoU", "depth_RMSE", "edge_F", "macs"} <= set(
        m["configurations"][0])
    assert m["budget_check"]["within_budget"] == m["budget_check"]["queries"] == 200
    for key in ("rank_correlation", "dymu", "hypervolume"):
        assert key in m["controllability"] and key in m["controllability_uniform"]
    capsys.readouterr()
    assert main(["multitask", "search", "--run", out, "--budget-frac", "0.5", "--prefs", "0.7,0.2,0.1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["macs"] <= res["budget"] and set(res["config"]["decoders"]) == {"seg", "depth", "edge"}
    with pytest.raises(SystemExit, match="below the smallest"):
        main(["multitask", "search", "--run", out, "--budget", "10", "--prefs", "1,1,1"])
    assert main(["multitask", "eval", "--run", out, "latency_reps=1"]) == 0
    assert os.path.getsize(os.path.join(out, "metrics.json")) > 0
