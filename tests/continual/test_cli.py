import json
import os
import subprocess
import sys

import pytest
import torch

from sparsecl.cli import build_parser, main, parse_args
from sparsecl.continual.run import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# every documented flag: (command-line words, config key, expected value)
FLAG_CASES = [
    (["--out", "o"], "out", "o"), (["--dataset", "cifar100", "--data-root", "/d"], "data.name", "cifar100"),
    (["--data-root", "/d"], "data.root", "/d"), (["--tasks", "10"], "data.n_tasks", 10),
    (["--model", "resnet18", "--dataset", "cifar100", "--data-root", "/d"], "model.name", "resnet18"),
    (["--width", "512"], "model.width", 512), (["--depth", "3"], "model.depth", 3),
    (["--width", "0.5", "--model", "mobilenetv2", "--dataset", "cifar100", "--data-root", "/d"], "model.width", 0.5),
    (["--density", "0.05"], "density", 0.05), (["--density", "adaptive"], "density", "adaptive"),
    (["--init", "uniform"], "init", "uniform"), (["--growth", "unfired"], "growth", "unfired"),
    (["--update-every", "7"], "update_every", 7), (["--drop-fraction", "0.3"], "drop_fraction", 0.3),
    (["--epochs", "4"], "epochs", 4), (["--batch-size", "16"], "batch_size", 16),
    (["--optimizer", "adamw"], "optimizer.name", "adamw"), (["--lr", "0.001"], "optimizer.lr", 0.001),
    (["--lr-schedule", "multistep"], "lr_schedule.name", "multistep"),
    (["lr_schedule.milestones=[0.3]"], "lr_schedule.milestones", [0.3]),
    (["--weight-decay", "0.1"], "optimizer.weight_decay", 0.1), (["--momentum", "0.5"], "optimizer.momentum", 0.5),
    (["--seed", "3"], "seed", 3), (["--threads", "2"], "threads", 2),
    (["--checkpoint-every", "50"], "checkpoint_every", 50), (["--device", "cpu"], "device", "cpu"),
    (["--resume"], "resume", True), (["--dense-masked"], "mode", "dense-masked"),
    (["--compare-dense-masked"], "compare_dense_masked", True), (["--no-progress"], "progress", False),
    (["model.width=64"], "model.width", 64), (["optimizer.name=adam"], "optimizer.name", "adam"),
    (["density=0.01"], "density", 0.01), (["data.root=/x"], "data.root", "/x"),
    (["model.width=64", "--epochs", "2", "density=0.05"], "density", 0.05),  # overrides on both sides of a flag
]


def _get(cfg, key):
    for k in key.split("."):
        cfg = cfg[k]
    return cfg


@pytest.mark.parametrize("words,key,value", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_every_flag_parses_into_the_config(words, key, value):
    cfg = build_config(parse_args(["continual"] + words))
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


# (arguments, words the one-line message must hold): each config value is checked before anything runs
USER_ERRORS = [
    (["--epochs", "-1"], ["'epochs'", ">= 1", "--epochs"]), (["--epochs", "0"], ["'epochs'"]),
    (["--lr", "nan"], ["'optimizer.lr'", "finite", "--lr"]), (["--lr", "inf"], ["'optimizer.lr'", "finite"]),
    (["--lr", "0"], ["'optimizer.lr'", "> 0"]), (["--batch-size", "0"], ["'batch_size'", "--batch-size"]),
    (["model.width=-5"], ["'model.width'", "> 0"]), (["model.width=0.5"], ["'model.width'", "whole number"]),
    (["model.width=.nan"], ["'model.width'", "finite"]), (["model.depth=0"], ["'model.depth'"]),
    (["--density", "2"], ["'density'", "<= 1", "'adaptive'"]), (["--density", "-0.1"], ["'density'"]),
    (["--density", "nan"], ["'density'", "finite"]), (["--tasks", "0"], ["'data.n_tasks'", "--tasks"]),
    (["--momentum", "1.5"], ["'optimizer.momentum'"]), (["--weight-decay", "-1"], ["'optimizer.weight_decay'"]),
    (["--drop-fraction", "3"], ["'drop_fraction'"]), (["drop_fraction_end=-1"], ["'drop_fraction_end'"]),
    (["--update-every", "0"], ["'update_every'"]), (["--seed", "-1"], ["'seed'"]), (["--threads", "-2"], ["'threads'"]),
    (["--checkpoint-every", "-1"], ["'checkpoint_every'"]), (["lr_schedule.gamma=0"], ["'lr_schedule.gamma'"]),
    (["lr_schedule.milestones=[0.5, 2]"], ["'lr_schedule.milestones'", "each element"]),
    (["lr_schedule.name=step"], ["'lr_schedule.name'", "'multistep'"]),
    (["optimizer.name=rmsprop"], ["'optimizer.name'"]),
    (["model.name=vgg"], ["'model.name'", "'resnet18'"]), (["epochs=ten"], ["'epochs'", "int"]),
    (["model.widht=3"], ["unknown config key 'model.widht'"]), (["epochs=[1"], ["not valid YAML"]),
    (["--device", "foo"], ["'device'"]),
    *([(["--device", "cuda:0"], ["no CUDA device", "--device cpu"])] if not torch.cuda.is_available() else []),
    (["--dataset", "cifar100"], ["--data-root"]), (["--model", "cnn"], ["needs images", "--model mlp"]),
    (["--config", "/nonexistent/run.yaml"], ["cannot read config file", "/nonexistent/run.yaml"]),
]


def _user_error(argv, capsys):
    rc = main(["continual", "--no-progress", "--threads", "1"] + argv)
    captured = capsys.readouterr()
    return rc, captured.err.strip()


@pytest.mark.parametrize("argv,words", USER_ERRORS, ids=[" ".join(c[0]) for c in USER_ERRORS])
def test_each_user_error_is_one_line_and_exit_status_2(tmp_path, capsys, argv, words):
    rc, err = _user_error(["--out", str(tmp_path / "run")] + argv, capsys)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("sparsecl continual: error: ") and "Traceback" not in err
    for w in words:
        assert w in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_missing_data_directory_is_one_line_naming_the_layout(tmp_path, capsys):
    rc, err = _user_error(["--out", str(tmp_path / "run"), "--dataset", "cifar100", "--data-root",
                           str(tmp_path / "nowhere"), "model.width=0.25", "--model", "mobilenetv2"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "not found under" in err and "cifar-100-python/train" in err


def test_a_model_that_does_not_fit_in_memory_is_refused_in_one_line(tmp_path, capsys):
    rc, err = _user_error(["--out", str(tmp_path / "run"), "model.width=400000"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "GiB" in err and "model.width" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_corrupted_checkpoint_on_resume_is_one_line_saying_what_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--epochs", "1", "--checkpoint-every", "5", "model.width=16", "--dense-masked"]
    assert main(["continual", "--no-progress", "--threads", "1"] + args) == 0
    path = out / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    capsys.readouterr()
    rc, err = _user_error(args + ["--resume"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "corrupted" in err and str(path) in err and "delete" in err


def test_resume_from_another_models_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--epochs", "1", "--dense-masked"]
    assert main(["continual", "--no-progress", "--threads", "1", "model.width=16"] + args) == 0
    capsys.readouterr()
    rc, err = _user_error(args + ["model.width=24", "--resume"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "model.width=16 there, 24 here" in err and "another --out" in err


def test_a_truncated_dataset_file_is_one_line(tmp_path, capsys):
    from .test_presets import write_cifar100

    write_cifar100(str(tmp_path / "data"))
    train = tmp_path / "data" / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    rc, err = _user_error(["--out", str(tmp_path / "run"), "--dataset", "cifar100", "--data-root",
                           str(tmp_path / "data"), "--model", "mobilenetv2"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "cannot read the cifar100 files" in err and "complete copy" in err


def test_debug_shows_the_traceback(tmp_path):
    from sparsecl.errors import ConfigError

    with pytest.raises(ConfigError, match="'epochs'"):
        main(["continual", "--out", str(tmp_path), "--epochs", "-1", "--debug"])


def test_user_error_exit_status_from_the_console(tmp_path):
    """Through the real entry point: status 2, one line on stderr, no traceback."""
    r = subprocess.run([sys.executable, "-m", "sparsecl.cli", "continual", "--out", str(tmp_path), "--lr", "nan"],
                       env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "'optimizer.lr'" in r.stderr
    assert r.stdout == ""


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
        dense_tasks = m["dense_masked"]["tasks"]  # the per-task seconds the per-task ratios divide
        assert [t["task"] for t in dense_tasks] == list(range(5))
        for t, d, r in zip(m["tasks"], dense_tasks, m["vs_dense_masked"]["train_speedup_per_task"]):
            assert abs(r - (t["samples"] / t["train_seconds"]) / (d["samples"] / d["train_seconds"])) < 1e-9 * r


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


def test_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    """Piped (a log, CI): the bars still show each task, as plain text, without a redraw per step."""
    r = subprocess.run([sys.executable, "-m", "sparsecl.cli", "continual", "--out", str(tmp_path), "--epochs", "2",
                        "--batch-size", "16", "--dense-masked", "--threads", "1", "model.width=16"],
                       env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for t in range(1, 6):
        drawn = r.stderr.count(f"task {t}/5")
        assert 1 <= drawn <= 3, r.stderr[-2000:]  # the start, the end, and a 30-s update at most (36 steps)
        assert f"task {t}/5: 100%" in r.stderr
    assert r.stderr.isascii() and "ACC" in r.stdout


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"epochs": -1}, {"optimizer": {"lr": float("nan")}},
                                 {"model": {"width": -5}}, {"lr_schedule": {"name": "step"}}])
def test_the_trainer_checks_its_config_too(tmp_path, bad):
    from sparsecl.continual import ContinualTrainer
    from sparsecl.errors import ConfigError

    with pytest.raises(ConfigError, match="config key"):
        ContinualTrainer({"out": str(tmp_path), **bad})
