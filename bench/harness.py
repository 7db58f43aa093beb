"""Timing and reporting shared by every benchmark: median wall time, GFLOP/s, machine info."""
import datetime
import os
import platform
import statistics
import time
import warnings

import torch

import sparsecl


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device="cpu", min_time=0.5, min_runs=5, warmup=2):
    """Median seconds per call of ``fn()`` over at least ``min_runs`` runs and ``min_time`` seconds.

    On CUDA, times batches of calls between CUDA events (batches of >= 1 ms, so launch gaps and the
    host clock stay out of the number) and returns the median batch time per call.
    """
    if torch.device(device).type == "cuda":
        return _measure_cuda(fn, min_time, min_runs, warmup)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse.*support is in beta.*")
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
            if len(times) >= 1000:
                break
    return statistics.median(times)


def _measure_cuda(fn, min_time, min_runs, warmup):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse.*support is in beta.*")
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        inner = max(1, min(100, int(1.0 / max(start.elapsed_time(end), 1e-3))))
        times = []
        t_begin = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - t_begin < min_time:
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
            if len(times) >= 1000:
                break
    return statistics.median(times)


def fwd_bwd(fn, *inputs):
    """A callable running forward + backward of ``fn()`` (summed), clearing ``inputs``' grads first."""
    def run():
        for t in inputs:
            t.grad = None
        fn().sum().backward()
    return run


def machine_info():
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_family_model": _cpu_family_model(),  # e.g. AMD family 25 model 1 = Zen 3, model 17 = Zen 4
        "cpu_isa": sparsecl.build_info().get("cpu_isa_runtime"),  # the ISA sparsecl's CPU kernels dispatch to
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_cuda": torch.version.cuda,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _cpuinfo(key):
    """The first value of ``key`` in /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model():
    return _cpuinfo("model name") or platform.processor()


def _cpu_family_model():
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return f"family {family} model {model}" if family and model else None


def format_table(rows, columns):
    """Plain-text table of ``rows`` (dicts) with the given column keys."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def allocations(fn):
    """Sizes in bytes of every CPU allocation made while ``fn()`` runs (torch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]


def measure_interleaved(fns, device="cpu", min_time=0.5, min_runs=5, warmup=1):
    """Median seconds per call of each ``fns[name]()``, timed round-robin so that every candidate
    sees the same background load (for ratios on a shared machine). Returns {name: seconds}."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse.*support is in beta.*")
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        sync(device)
        times = {name: [] for name in fns}
        start = time.perf_counter()
        while min(len(t) for t in times.values()) < min_runs or time.perf_counter() - start < min_time:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
            if len(times[next(iter(times))]) >= 1000:
                break
    return {name: statistics.median(t) for name, t in times.items()}
