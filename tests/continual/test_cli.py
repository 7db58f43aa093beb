import json
import os
import subprocess
import sys

import pytest

from sparsecl.cli import build_parser, main
from sparsecl.continual.run import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# every documented flag: (command-line words, config key, expected value)
FLAG_CASES = [
    (["--out", "o"], "out", "o"), (["--dataset", "cifar100"], "data.name", "cifar100"),
    (["--data-root", "/d"], "data.root", "/d"), (["--tasks", "10"], "data.n_tasks", 10),
    (["--model", "resnet18"], "model.name", "resnet18"), (["--width", "512"], "model.width", 512),
    (["--width", "0.5"], "model.width", 0.5), (["--depth", "3"], "model.depth", 3),
    (["--density", "0.05"], "density", 0.05), (["--density", "adaptive"], "density", "adaptive"),
    (["--init", "uniform"], "init", "uniform"), (["--growth", "unfired"], "growth", "unfired"),
    (["--update-every", "7"], "update_every", 7), (["--drop-fraction", "0.3"], "drop_fraction", 0.3),
    (["--epochs", "4"], "epochs", 4), (["--batch-size", "16"], "batch_size", 16),
    (["--optimizer", "adamw"], "optimizer.name", "adamw"), (["--lr", "0.001"], "optimizer.lr", 0.001),
    (["--weight-decay", "0.1"], "optimizer.weight_decay", 0.1), (["--momentum", "0.5"], "optimizer.momentum", 0.5),
    (["--seed", "3"], "seed", 3), (["--threads", "2"], "threads", 2),
    (["--checkpoint-every", "50"], "checkpoint_every", 50), (["--device", "cpu"], "device", "cpu"),
    (["--resume"], "resume", True), (["--dense-masked"], "mode", "dense-masked"),
    (["--compare-dense-masked"], "compare_dense_masked", True), (["--no-progress"], "progress", False),
    (["model.width=64"], "model.width", 64), (["optimizer.name=adam"], "optimizer.name", "adam"),
    (["density=0.01"], "density", 0.01), (["data.root=/x"], "data.root", "/x"),
]


def _get(cfg, key):
    for k in key.split("."):
        cfg = cfg[k]
    return cfg


@pytest.mark.parametrize("words,key,value", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_every_flag_parses_into_the_config(words, key, value):
    cfg = build_config(build_parser().parse_args(["continual"] + words))
    assert _get(cfg, key) == value


def test_config_files_merge_in_order_and_overrides_win(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("model: {width: 128}\ndensity: 0.2\n")
    b.write_text("density: 0.05\noptimizer: {name: adam}\n")
    cfg = build_config(build_parser().parse_args(["continual", "-c", str(a), "--config", str(b), "--width", "99",
                                                   "epochs=3"]))
    assert cfg["model"]["width"] == 99 and cfg["model"]["depth"] == 2 and cfg["density"] == 0.05
    assert cfg["optimizer"] == {"name": "adam", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    assert cfg["epochs"] == 3


def test_the_shipped_config_parses():
    cfg = build_config(build_parser().parse_args(["continual", "-c", os.path.join(ROOT, "configs/continual/digits.yaml")]))
    assert cfg["density"] == 0.1 and cfg["model"]["width"] >= 1024  # the bar's "layers at least 1024 wide"


def test_bad_keys_and_values_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'model.widht'"):
        build_config(build_parser().parse_args(["continual", "model.widht=3"]))
    with pytest.raises(ValueError, match="key=value"):
        build_config(build_parser().parse_args(["continual", "width"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("denisty: 0.1\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        build_config(build_parser().parse_args(["continual", "-c", str(bad)]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["continual", "--growth", "magic"])


def test_cli_end_to_end_writes_metrics_heatmap_and_logs(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["continual", "--out", str(out), "--epochs", "1", "--density", "0.2", "--no-progress", "--threads", "1",
               "--compare-dense-masked", "model.width=32"] if _sparse() else
              ["continual", "--out", str(out), "--epochs", "1", "--density", "0.2", "--no-progress", "--dense-masked",
               "--threads", "1", "model.width=32"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("acc_matrix", "ACC", "BWT", "FWT", "forgetting", "per_task_seconds", "peak_rss_bytes",
              "capacity_per_layer", "throughput_samples_per_s", "state_bytes_per_task"):
        assert k in m
    assert len(m["acc_matrix"]) == 5 and all(len(r) == 5 for r in m["acc_matrix"])
    assert (out / "acc_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "log.csv").read_text().splitlines()) == 6
    text = capsys.readouterr().out
    assert "ACC" in text and "BWT" in text and "accuracy matrix" in text
    if _sparse():
        assert "speedup over --dense-masked" in text and m["vs_dense_masked"]["train_speedup"] > 0


def _sparse():
    from ._cfg import HAS_SPARSE_LINEAR

    return HAS_SPARSE_LINEAR


def test_torchrun_two_ranks_identical_masks(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU): both ranks end with the same masks and ownership."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sparsecl.cli", "continual", "--out", str(out), "--epochs", "1", "--density", "0.2",
           "--update-every", "2", "--batch-size", "32", "--threads", "1", "--no-progress", "model.width=32",
           "--growth", "gradient"] + ([] if _sparse() else ["--dense-masked"])
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    other = json.loads((out / "rank1.json").read_text())
    assert m["world_size"] == 2
    assert other["mask_sha256"] == m["mask_sha256"]
