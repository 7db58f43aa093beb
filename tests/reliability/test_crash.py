"""Crash safety of ``sparsecl continual``: SIGKILL at random points (also inside checkpoint writes), then
--resume; the newest checkpoint always loads and validates, never goes backwards, and every resumed
chain ends bit-identical (metrics, masks, owners, weights, optimizer-free state) to an uninterrupted run.

Kills per run: SPARSECL_CRASH_KILLS (default 20; the long profile uses 200). Kill points come from the
``seed`` fixture (fresh per run, printed; SPARSECL_TEST_SEED reproduces a run).
"""
import json
import os
import random

import torch

from sparsecl.continual.checkpoint import load_checkpoint

from ._util import assert_same_tensors, csv_view, deterministic_view, run_python

PHASES = ("partial", "written", "synced", "renamed")
ARGS = ["continual", "--width", "32", "--depth", "2", "--epochs", "3", "--batch-size", "32", "--density", "0.2",
        "--update-every", "3", "--checkpoint-every", "2", "--optimizer", "adamw", "--lr", "0.01",
        "--weight-decay", "0.01", "--threads", "1", "--no-progress"]


def kill_plan(n, rng):
    """n kills: half inside checkpoint writes (every phase at least n//8 times), half asynchronous."""
    n_save = n // 2
    phases = [p for p in PHASES for _ in range(n_save // len(PHASES))]
    phases += [rng.choice(PHASES) for _ in range(n_save - len(phases))]
    kills = [{"kind": "save", "at": f"{p}:{rng.randint(1, 4)}:checkpoint.pt"} for p in phases]
    kills += [{"kind": "async", "delay": round(rng.uniform(0.0, 0.4), 3)} for _ in range(n - n_save)]
    rng.shuffle(kills)
    return kills


def _validate(s):
    """A loaded continual checkpoint is internally consistent."""
    assert 0 <= s["task"] < 5 and s["step"] >= 0 and s["global_step"] >= 0
    assert len(s["trunk"]) == len(s["owner"]) > 0
    for tr, own in zip(s["trunk"], s["owner"]):
        assert tr["mask"].dtype == torch.bool and own.dtype == torch.uint8 and own.shape == tr["mask"].shape
        assert tr["values"].numel() == int(tr["mask"].sum())
        assert bool(((own != 0) <= tr["mask"]).all())  # frozen positions stay in the mask
    assert (s["task_state"] is None) == (s["step"] == 0)
    # reuse: mask (the default): one compact mask per finished task and layer (int32 flat positions, no dense
    # masks), and mid-task the current task's mask too
    assert len(s["task_masks"]) == s["task"] + (s["step"] == 0)
    current = [] if s["task_mask"] is None else [s["task_mask"]]
    assert (s["task_mask"] is None) == (s["step"] == 0)
    for masks in s["task_masks"] + current:
        assert len(masks) == len(s["trunk"]) and all(k.dtype == torch.int32 and k.dim() == 1 for k in masks)


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, seed):
    n = int(os.environ.get("SPARSECL_CRASH_KILLS", "20"))
    rng = random.Random(seed)
    args = ARGS + ["--seed", str(seed % 1000)]
    plan = {"args": args, "out": str(tmp_path / "run"), "reference": str(tmp_path / "reference"),
            "snapshots": str(tmp_path / "snap"), "kills": kill_plan(n, rng)}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    run_python(["-m", "tests.reliability._crash_driver", str(tmp_path / "plan.json"), str(tmp_path / "report.json")],
               cwd=tmp_path, timeout=1200)
    report = json.loads((tmp_path / "report.json").read_text())
    lives = report["lives"]
    killed = [r for r in lives if r["killed"]]
    assert report["reference_exit"] == 0
    assert len(killed) == n, f"only {len(killed)} of {n} planned kills happened: {lives}"

    # after every kill the newest checkpoint loads (also with plain weights_only torch.load), validates,
    # and is never older than the one before it in the same chain: a kill loses no saved progress
    last = {}
    for r in lives:
        if r["snapshot"] is None:
            assert last.get(r["chain"]) is None, f"a checkpoint disappeared after a kill: {r}"
            continue
        torch.load(r["snapshot"], weights_only=True)
        s = load_checkpoint(r["snapshot"])
        _validate(s)
        key = (s["global_step"], s["task"], s["step"] == 0)
        assert key >= last.get(r["chain"], (0, 0, False)), f"checkpoint went backwards after {r}"
        last[r["chain"]] = key

    # a self-kill before the rename leaves the torn temp file behind (and the old checkpoint in place)
    mid_save = [r for r in killed if r["kind"] == "save" and not r["at"].startswith("renamed")]
    assert len(mid_save) >= 3 * (n // 2 // 4)
    for r in mid_save:
        assert any(f.endswith("checkpoint.pt") for f in r["temp_files"]), f"no torn temp file after {r}"

    ref_dir = plan["reference"]
    ref = json.loads(open(os.path.join(ref_dir, "metrics.json")).read())
    ref_ckpt = load_checkpoint(os.path.join(ref_dir, "checkpoint.pt"))
    ref_ckpt.pop("config")
    for chain in report["chains"]:
        out = chain["out"]
        assert chain["exit"] == 0, chain
        got = json.loads(open(os.path.join(out, "metrics.json")).read())
        assert deterministic_view(got) == deterministic_view(ref)
        assert got["mask_sha256"] == ref["mask_sha256"] and got["acc_matrix"] == ref["acc_matrix"]
        ck = load_checkpoint(os.path.join(out, "checkpoint.pt"))
        ck.pop("config")
        ck["log"], ref_log = deterministic_view(json.loads(ck["log"])), deterministic_view(json.loads(ref_ckpt["log"]))
        assert_same_tensors({**ck, "log": None}, {**ref_ckpt, "log": None}, "final checkpoint")
        assert ck["log"] == ref_log
        assert csv_view(os.path.join(out, "log.csv")) == csv_view(os.path.join(ref_dir, "log.csv"))
        assert not [f for f in os.listdir(out) if f.startswith(".tmp-")], "stale temp files left after the resume"
    phases = {}
    for r in killed:
        k = r["at"].split(":")[0] if r["kind"] == "save" else "async"
        phases[k] = phases.get(k, 0) + 1
    print(f"{n} kills over {len(report['chains'])} chain(s), {len(lives) - len(killed)} lives ran to the end; "
          f"kinds {phases}; {len(mid_save)} left a torn checkpoint temp file; "
          f"driver {report['seconds']:.1f} s (reference run {report['reference_seconds']:.1f} s)")
