"""Helpers shared by the crash and determinism tests."""
import csv
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# wall-clock and memory measurements: legitimately differ between two runs of the same seed
# (also every key with a "s", "ms" or "seconds" word: train_s, latency_ms_batch1, search_ms_max, ...)
TIMING_KEYS = {"throughput", "peak_rss_bytes", "peak_device_bytes", "load_average"}


def is_measurement(key):
    return key in TIMING_KEYS or bool({"s", "ms", "seconds", "time"} & set(key.split("_")))


def deterministic_view(obj, drop=("config",)):
    """``obj`` (parsed metrics.json) without timing/memory-measurement keys and the keys in ``drop``."""
    if isinstance(obj, dict):
        return {k: deterministic_view(v, ()) for k, v in obj.items()
                if not is_measurement(k) and k not in drop}
    if isinstance(obj, list):
        return [deterministic_view(v, ()) for v in obj]
    return obj


def csv_view(path):
    """log.csv rows without the timing columns."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if not is_measurement(k)} for row in csv.DictReader(f)]


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


def run_python(*arg_lists, cwd, timeout=600):
    """Run ``python args`` for each list, concurrently, each in a fresh interpreter with this checkout
    importable; asserts they all succeed and returns their stdouts."""
    # passive OpenMP waits: spinning threads on a busy machine cost CPU time, never change results
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("SPARSECL_CRASH_AT", None)
    procs = [subprocess.Popen([sys.executable, *args], cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in arg_lists]
    outs = []
    for args, p in zip(arg_lists, procs):
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{err[-3000:]}"
        outs.append(out)
    return outs
