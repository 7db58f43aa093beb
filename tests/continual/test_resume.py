import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sparsecl.continual import ContinualTrainer
from sparsecl.checkpoint import CheckpointError, load_checkpoint
from sparsecl.continual.data import split_digits
from sparsecl.continual.run import masks_digest

from ._cfg import MODES, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cfg):
    tr = ContinualTrainer(cfg, split_digits())
    res = tr.run()
    return res, masks_digest(tr)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stop", [7, 27])  # mid-task 1 (after a checkpoint), mid-task 3
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, mode, stop):
    opt = {"name": "adamw", "lr": 0.01, "weight_decay": 0.01}
    full, full_digest = _run(tiny(tmp_path / "full", mode=mode, optimizer=opt, growth="random"))
    cfg = tiny(tmp_path / "cut", mode=mode, optimizer=opt, growth="random", checkpoint_every=3)
    with pytest.raises(SystemExit):
        _run({**cfg, "stop_after_steps": stop})
    assert load_checkpoint(os.path.join(cfg["out"], "checkpoint.pt"))["global_step"] > 0
    resumed, digest = _run({**cfg, "resume": True})
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert (resumed["ACC"], resumed["BWT"], resumed["FWT"]) == (full["ACC"], full["BWT"], full["FWT"])
    assert digest == full_digest


def test_resume_rejects_a_corrupted_checkpoint(tmp_path):
    cfg = tiny(tmp_path, mode="dense-masked", checkpoint_every=3)
    with pytest.raises(SystemExit):
        _run({**cfg, "stop_after_steps": 5})
    path = os.path.join(cfg["out"], "checkpoint.pt")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="checksum|corrupted"):
        _run({**cfg, "resume": True})


def test_sigkill_mid_run_then_resume(tmp_path):
    """A real crash: SIGKILL a CLI subprocess once it has written a mid-task checkpoint, then --resume."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "sparsecl.cli", "continual", "--dense-masked", "--out", str(out), "--epochs", "6",
            "--density", "0.2", "--update-every", "3", "--batch-size", "32", "--checkpoint-every", "4",
            "--threads", "1", "--no-progress", "model.width=32", "optimizer.name=adam", "optimizer.lr=0.01"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.Popen(args, cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {p.stderr.read()[-2000:]}"
    assert not (out / "metrics.json").exists()
    subprocess.run(args + ["--resume"], cwd=str(tmp_path), env=env, check=True, stdout=subprocess.DEVNULL)
    resumed = json.loads((out / "metrics.json").read_text())
    full, _ = _run(tiny(tmp_path / "full", mode="dense-masked", epochs=6, density=0.2, update_every=3,
                        optimizer={"name": "adam", "lr": 0.01, "weight_decay": 0.0}))
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["ACC"] == full["ACC"] and resumed["BWT"] == full["BWT"]
