"""Same seed, two separate processes, same thread count: bit-identical masks, weights and metrics on CPU
(the continual and multi-task trainers through their CLIs, the DST engine over every sparse layer kind and
growth criterion). Two threads, so the OpenMP paths of the C++ kernels run. Only wall-clock and memory
measurements may differ (``_util.deterministic_view`` drops them)."""
import json
import os

import pytest

from sparsecl.continual.checkpoint import load_checkpoint

from ._util import assert_same_tensors, csv_view, deterministic_view, run_python

THREADS = "2"


def test_dst_engine_two_processes_bit_identical(tmp_path, seed):
    args = ["-m", "tests.reliability._dst_worker", str(seed % 10_000), THREADS]
    a, b = (json.loads(o) for o in run_python(args, args, cwd=tmp_path))
    assert a == b  # mask and parameter sha256 digests, losses and per-update change counts, per growth criterion
    assert len({v["masks"] for v in a.values()}) == len(a)  # the criteria really produced different topologies


def test_continual_two_processes_bit_identical(tmp_path, seed):
    def args(out):
        return ["-m", "sparsecl.cli", "continual", "--out", str(tmp_path / out), "--width", "32", "--epochs", "2", "--tasks", "2",
                "--batch-size", "32", "--density", "0.2", "--update-every", "3", "--optimizer", "adamw",
                "--lr", "0.01", "--checkpoint-every", "5", "--threads", THREADS, "--seed", str(seed % 1000),
                "--no-progress"]

    run_python(args("a"), args("b"), cwd=tmp_path)
    ma, mb = (json.load(open(tmp_path / d / "metrics.json")) for d in "ab")
    assert ma["mask_sha256"] == mb["mask_sha256"] and ma["acc_matrix"] == mb["acc_matrix"]
    assert deterministic_view(ma) == deterministic_view(mb)
    assert csv_view(tmp_path / "a" / "log.csv") == csv_view(tmp_path / "b" / "log.csv")
    ca, cb = (load_checkpoint(str(tmp_path / d / "checkpoint.pt")) for d in "ab")
    for c in (ca, cb):
        c.pop("config")  # holds the output directory
        c["log"] = deterministic_view(json.loads(c["log"]))
    assert_same_tensors(ca, cb, "final checkpoint")  # trunk values + masks, owners, heads, RNG state


@pytest.mark.skipif(not hasattr(__import__("sparsecl.nn").nn, "SlimmableConv2d"), reason="no slimmable layers")
def test_multitask_two_processes_bit_identical(tmp_path, seed):
    tiny = ["steps=4", "n_train=48", "n_val=24", "n_test=24", "size=16", "batch_size=8", "enc_channels=[4,8,8]",
            "dec_channels=8", "widths=[0.5,1.0]", "prefs_per_budget=6", "latency_reps=1", "recal_batches=2",
            "n_queries=200", f"threads={THREADS}", f"seed={seed % 1000}"]

    def args(out):
        return ["-m", "sparsecl.cli", "multitask", "train", "--out", str(tmp_path / out), "--no-progress", *tiny]

    run_python(args("a"), args("b"), cwd=tmp_path)
    ma, mb = (json.load(open(tmp_path / d / "metrics.json")) for d in "ab")
    assert deterministic_view(ma) == deterministic_view(mb)
    assert ma["configurations"] and ma["controllability"]
    ka, kb = (load_checkpoint(str(tmp_path / d / "model.pt"), kind="sparsecl-multitask-run") for d in "ab")
    for k in (ka, kb):
        k["history"] = deterministic_view(k["history"])
    assert_same_tensors(ka["state_dict"], kb["state_dict"], "state_dict")
    assert ka["history"] == kb["history"] and ka["val_table"] == kb["val_table"]
