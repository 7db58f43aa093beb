"""bench/gpu.sh --dry-run: the whole device script on the CPU (tiny shapes, Triton interpreted), so it cannot
die on a Python error during a rare GPU lease."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_sh_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    run = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh"), "--dry-run", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:] + run.stdout[-2000:]
    for name in ("machine", "ceilings", "correct", "gap", "ablate", "ncu-targets"):
        with open(tmp_path / f"{name}.json") as f:
            assert json.load(f)["dry_run"] is True, name
    with open(tmp_path / "correct.json") as f:
        correct = json.load(f)
    assert correct["all_ok"] and {r["check"] for r in correct["rows"]} >= {"bsr fwd", "bsr dx", "bsr dw", "prune_regrow"}
    with open(tmp_path / "gap.json") as f:
        gap = json.load(f)["rows"]
    assert not [r for r in gap if "error" in r], gap
    assert {"bsr_linear", "csr_linear", "masked_linear", "bsr_conv2d", "csr_conv2d", "prune_regrow"} <= {
        r["op"] for r in gap}
    with open(tmp_path / "ablate.json") as f:
        ablate = json.load(f)["rows"]
    assert len(ablate) == 2 and not [r for r in ablate if "error" in r], ablate  # B in (32, 64) in the dry run
    # the gap table is printed last
    tail = run.stdout.strip().splitlines()
    assert tail[-1].startswith("prune_regrow") and any(line.startswith("gap table on") for line in tail)
