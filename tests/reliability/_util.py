"""Helpers shared by the crash and determinism tests."""
import csv
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# wall-clock and memory measurements: legitimately differ between two runs of the same seed
TIMING_KEYS = {"train_seconds", "per_task_seconds", "throughput", "throughput_samples_per_s", "peak_rss_bytes",
               "peak_device_bytes", "train_s", "eval_s", "total_s", "latency_ms", "latency", "seconds"}


def deterministic_view(obj, drop=("config",)):
    """``obj`` (parsed metrics.json) without timing/memory-measurement keys and the keys in ``drop``."""
    if isinstance(obj, dict):
        return {k: deterministic_view(v, ()) for k, v in obj.items()
                if k not in TIMING_KEYS and k not in drop and not k.endswith("_ms") and not k.endswith("_s")}
    if isinstance(obj, list):
        return [deterministic_view(v, ()) for v in obj]
    return obj


def csv_view(path):
    """log.csv rows without the timing columns."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in csv.DictReader(f)]


def _bits(t):
    """Floats as same-size integers, so NaN payloads and -0.0 are compared too."""
    if t.is_floating_point():
        return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def assert_same_tensors(a, b, where="state"):
    """Nested dicts/lists/tuples of tensors and plain values are equal, tensors bit for bit (dtype too)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(_bits(a), _bits(b)), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def run_python(args, cwd, timeout=600, env=None):
    """Run ``python args`` in a fresh interpreter with this checkout importable; returns CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    env.pop("SPARSECL_CRASH_AT", None)
    p = subprocess.run([sys.executable, *args], cwd=str(cwd), env=env, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return p
