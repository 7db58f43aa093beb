"""Never slower than dense: each sparse layer computes each pass (forward, dX, dValues) either with its sparse
kernels or densely on its effective weight, whichever is measured faster for its shape, density and input
geometry on this machine. The mechanism (one autograd op, the incrementally kept dense weight) is
``sparsecl.ops.dense_or_sparse``; this module is the policy.

Modes, per direction ("forward", "dx", "dw"): "auto" (the calibrated choice), "sparse" or "dense". A direction's
mode is, first match wins:
  1. the layer's own setting: ``layer.dispatch = "dense"`` or ``{"dx": "sparse", ...}`` (None: inherit);
  2. ``sparsecl.set_dispatch(mode, direction=None)`` / ``with sparsecl.use_dispatch(mode): ...`` (process-wide);
  3. the environment variable ``SPARSECL_DISPATCH`` (auto | sparse | dense);
  4. the default: "auto", except while pytest runs a test (``PYTEST_CURRENT_TEST`` is set), where it is "sparse",
     so test suites are deterministic and exercise the sparse kernels unless they ask for another path.
Under ``torch.compile`` every direction is sparse (the public ops trace; calibration does not).

Calibration: the first call of a layer geometry under "auto" times both candidates of each direction
alternately on the real input (a warm-up round, then ``MIN_ROUNDS`` to ``CALIBRATION_ROUNDS`` rounds: it stops
after ``MIN_ROUNDS`` when a side is ``CLEAR_RATIO`` times faster or ``CALIBRATION_BUDGET_S`` per direction is spent;
minimum of the rounds, so one disturbed sample, e.g. page faults on a fresh output buffer, cannot decide)
and picks dense only when it is at least ``1 - DENSE_MARGIN`` faster (a tie keeps the sparse path, which needs no dense buffer). The key is the layer's
op and shape, the input's batch (rounded up to a power of two) and spatial size, memory format, dtype, and the
density bucket (``DENSITY_EDGES``): a DST update or a new task that moves the density into another bucket gets
a fresh calibration. Results are cached per machine in ``cache_path()``: ``$SPARSECL_CACHE_DIR``, else
``$XDG_CACHE_HOME/sparsecl``, else ``~/.cache/sparsecl``, file ``dispatch/<machine>.json`` keyed by CPU model,
runtime ISA (``sparsecl.build_info()["cpu_isa_runtime"]``, ``SPARSECL_CPU_ISA``), torch thread count (GPU:
device name) and the kernels' build (``kernels_build()``: a rebuilt or upgraded extension recalibrates). Writes
are atomic (temp file + rename) and merge with entries other processes wrote meanwhile; an unreadable or
malformed file is warned about once and recalibrated over; an unwritable directory is warned about once and the
choices stay in memory.

Reading it: ``layer.dispatch_choice`` ({"forward": "sparse"|"dense", "dx": ..., "dw": ...} of the last call),
``dispatch_report(model)`` (per layer: choice, source, density, key, calibration times; JSON-ready for
metrics.json) and ``cache_info()`` (path, machine, entries; printed by ``sparsecl info``).

Plugging in a layer: inherit ``DispatchMixin`` (gives ``dispatch``, ``dispatch_choice`` and ``dispatcher``) and
in forward return ``self.dispatcher(x, values, bias, make_spec, density, sparse_call, dense_grad_hook,
extra_parts)``; see ``Dispatcher.__call__`` and ``sparsecl.ops.dense_or_sparse``.
"""
import contextlib
import functools
import hashlib
import json
import os
import re
import threading
import time
import warnings

import torch

from .io import write_json_atomic
from .ops.dense_or_sparse import DIRECTIONS, Choice, DenseWeight, LinearGeometry, candidates, dense_or_sparse

MODES = ("auto", "sparse", "dense")
DENSITY_EDGES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DENSE_MARGIN = 0.97  # dense is chosen when t_dense < DENSE_MARGIN * t_sparse
CALIBRATION_ROUNDS = 5
MIN_ROUNDS = 3
CALIBRATION_BUDGET_S = 0.1  # per direction
CLEAR_RATIO = 1.5
CACHE_VERSION = 1

_lock = threading.Lock()
_global = {}  # direction or None (all directions) -> mode


# modes --------------------------------------------------------------------------------------------------------
def _check_mode(mode, what="dispatch mode"):
    if mode not in MODES:
        raise ValueError(f"{what} must be one of {MODES}, got {mode!r}")
    return mode


def _check_direction(direction):
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS} or None (all), got {direction!r}")
    return direction


def normalize_override(value):
    """A layer's ``dispatch`` setting as {direction: mode} (None: inherit everything). Accepts None, a mode, or a
    dict from directions to modes or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return dict.fromkeys(DIRECTIONS, _check_mode(value, "layer.dispatch"))
    if isinstance(value, dict):
        unknown = set(value) - set(DIRECTIONS)
        if unknown:
            raise ValueError(f"layer.dispatch keys must be among {DIRECTIONS}, got {sorted(unknown)}")
        return {d: _check_mode(m, f"layer.dispatch[{d!r}]") for d, m in value.items() if m is not None} or None
    raise TypeError(f"layer.dispatch must be None, a mode {MODES} or a dict direction -> mode, got "
                    f"{type(value).__name__}")


def set_dispatch(mode, direction=None):
    """Set the process-wide dispatch mode ("auto" | "sparse" | "dense"), for one direction ("forward" | "dx" |
    "dw") or for all (None, which also clears per-direction settings). ``mode=None`` removes the setting."""
    _check_direction(direction)
    with _lock:
        if direction is None:
            _global.clear()
        if mode is None:
            _global.pop(direction, None)
        else:
            _global[direction] = _check_mode(mode)


def get_dispatch(direction=None):
    """The process-wide mode of ``direction`` (None: the all-directions mode): set_dispatch, else
    SPARSECL_DISPATCH, else the default ("auto"; "sparse" while pytest runs a test)."""
    _check_direction(direction)
    mode = _global.get(direction, _global.get(None))
    if mode is not None:
        return mode
    env = os.environ.get("SPARSECL_DISPATCH")
    if env:
        return _check_mode(env.strip().lower(), "SPARSECL_DISPATCH")
    return "sparse" if "PYTEST_CURRENT_TEST" in os.environ else "auto"


@contextlib.contextmanager
def use_dispatch(mode, direction=None):
    """``with use_dispatch("dense"): ...`` sets the process-wide mode for the block, then restores the previous."""
    with _lock:
        saved = dict(_global)
    set_dispatch(mode, direction)
    try:
        yield
    finally:
        with _lock:
            _global.clear()
            _global.update(saved)


# the cache ------------------------------------------------------------------------------------------------------
def cache_dir():
    """$SPARSECL_CACHE_DIR, else $XDG_CACHE_HOME/sparsecl, else ~/.cache/sparsecl."""
    if os.environ.get("SPARSECL_CACHE_DIR"):
        return os.environ["SPARSECL_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparsecl")


@functools.lru_cache(maxsize=None)
def _cpu_model():
    from .info import cpu_model
    return cpu_model()


@functools.lru_cache(maxsize=None)
def kernels_build():
    """Identity of the kernels the choices were measured with, and how: sparsecl's version, the loaded extension
    file's size and modification time (a rebuilt or upgraded extension gets fresh calibrations) and the
    calibration's round count; 12 hex digits."""
    from . import __version__
    from ._extension import _C

    path = getattr(_C, "__file__", None) or "no-extension"
    try:
        st = os.stat(path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "unknown"
    return hashlib.sha1(f"{__version__}|{os.path.abspath(path)}|{stamp}|calibration {MIN_ROUNDS}".encode()
                        ).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def _runtime_isa(env_isa):
    from .info import runtime_isa
    return runtime_isa() or "reference"


def machine(device="cpu"):
    """What the cache is keyed by: {"device", "model", "isa", "threads", "kernels"} (CPU) or {"device", "model",
    "kernels"} (GPU); "kernels" is ``kernels_build()``."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"device": "cuda", "model": torch.cuda.get_device_name(device), "kernels": kernels_build()}
    return {"device": "cpu", "model": _cpu_model(), "isa": _runtime_isa(os.environ.get("SPARSECL_CPU_ISA")),
            "threads": torch.get_num_threads(), "kernels": kernels_build()}


def cache_path(device="cpu"):
    """The cache file of this machine (see the module docstring); it may not exist yet."""
    m = machine(device)
    text = "|".join(f"{k}={m[k]}" for k in sorted(m))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{m['model']}-{m.get('isa', '')}-{m.get('threads', '')}t").strip("-")
    return os.path.join(cache_dir(), "dispatch", f"{slug[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.json")


def _valid_entry(e):
    return (isinstance(e, dict) and all(e.get(d) in ("sparse", "dense") for d in DIRECTIONS))


def _read(path):
    """Entries of the cache file at ``path``: {} if absent; raises ValueError if unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        raise ValueError(f"not a version-{CACHE_VERSION} sparsecl dispatch cache")
    bad = [k for k, e in data["entries"].items() if not _valid_entry(e)]
    if bad:
        raise ValueError(f"malformed entries {bad[:3]}")
    return data["entries"]


class _Store:
    """The entries of one cache file, loaded once, written through after each calibration."""

    def __init__(self, path, machine_info):
        self.path, self.machine, self.warned = path, machine_info, set()
        try:
            self.entries = _read(path)
        except ValueError as exc:
            self._warn("read", f"sparsecl dispatch cache {path} is unreadable ({exc}); layers will be recalibrated "
                               "and the file rewritten")
            self.entries = {}

    def _warn(self, what, message):
        if what not in self.warned:
            self.warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def put(self, key, entry):
        self.entries[key] = entry
        try:
            on_disk = _read(self.path)
        except ValueError:
            on_disk = {}  # replaced by ours
        on_disk.update(self.entries)
        self.entries = on_disk
        try:
            write_json_atomic(self.path, {"version": CACHE_VERSION, "machine": self.machine, "entries": on_disk})
        except OSError as exc:
            self._warn("write", f"sparsecl dispatch cache {self.path} cannot be written ({exc}); dispatch choices "
                                "stay in memory for this process (set SPARSECL_CACHE_DIR to a writable directory)")


_stores = {}


def _store(device):
    path = cache_path(device)
    with _lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = _Store(path, machine(device))
    return store


def cache_info(device="cpu"):
    """{"path", "exists", "machine", "mode", "entries": {key: entry}} of this machine's dispatch cache."""
    path = cache_path(device)
    try:
        entries, error = _read(path), None
    except ValueError as exc:
        entries, error = {}, str(exc)
    info = {"path": path, "exists": os.path.exists(path), "machine": machine(device), "mode": get_dispatch(),
            "entries": entries}
    if error:
        info["error"] = error
    return info


def clear_memory_cache():
    """Forget the loaded cache files (the next lookup reads the file again)."""
    with _lock:
        _stores.clear()


# calibration ------------------------------------------------------------------------------------------------------
def _time_pair(sparse_fn, dense_fn, sync):
    """(t_sparse, t_dense) in seconds: minimum over alternating rounds after one untimed warm-up round. Stops after
    MIN_ROUNDS rounds when one side is CLEAR_RATIO times faster or CALIBRATION_BUDGET_S is spent, else after
    CALIBRATION_ROUNDS."""
    def once(fn):
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    once(sparse_fn), once(dense_fn)
    ts, td, start = [], [], time.perf_counter()
    for _ in range(CALIBRATION_ROUNDS):
        ts.append(once(sparse_fn))
        td.append(once(dense_fn))
        ratio = min(ts) / max(min(td), 1e-9)
        if len(ts) >= MIN_ROUNDS and (not 1 / CLEAR_RATIO < ratio < CLEAR_RATIO
                                      or time.perf_counter() - start > CALIBRATION_BUDGET_S):
            break
    return min(ts), min(td)


def calibrate(cands, device):
    """Time each direction's (sparse_fn, dense_fn) alternately; returns the cache entry (choice and times)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    entry, ms = {}, {}
    with torch.no_grad():
        for d in DIRECTIONS:
            ts, td = _time_pair(*cands[d], sync)
            entry[d] = "dense" if td < DENSE_MARGIN * ts else "sparse"
            ms[d] = {"sparse": round(ts * 1e3, 4), "dense": round(td * 1e3, 4)}
    entry["ms"] = ms
    entry["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return entry


def density_bucket(density):
    """The label "lo-hi" of the DENSITY_EDGES interval holding ``density`` (lo < d <= hi; 0 in the first)."""
    for lo, hi in zip(DENSITY_EDGES, DENSITY_EDGES[1:]):
        if density <= hi:
            return f"{lo:g}-{hi:g}"
    return f"{DENSITY_EDGES[-2]:g}-{DENSITY_EDGES[-1]:g}"


def _pow2(n):
    return 1 << max(int(n) - 1, 0).bit_length()


def input_signature(x, linear):
    """The input part of a cache key: batch rounded up to a power of two, spatial size, memory format, dtype."""
    if linear:
        rows = x.numel() // max(x.shape[-1], 1) if x.shape[-1] else 0
        shape = f"T{_pow2(rows)}"
    else:
        n, _, h, w = x.shape
        cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        shape = f"N{_pow2(n)}|{h}x{w}|{'cl' if cl else 'nchw'}"
    return f"{shape}|{str(x.dtype).replace('torch.', '')}|{x.device.type}"


class Dispatcher:
    """One layer's dispatch state: its override (``layer.dispatch``), its ``DenseWeight`` (created on the first
    dense use) and the record of its last decision (``layer.dispatch_choice``, ``dispatch_report``)."""

    def __init__(self):
        self.override = None
        self.dense = None
        self.last = None
        self._memo = {}  # (modes, input shape/stride/dtype/device, density) -> (Choice, record)

    def modes(self):
        """{direction: mode} after the override, the process-wide setting, the environment and the default."""
        own = self.override or {}
        if len(own) == len(DIRECTIONS):
            return own
        default = None
        modes = {}
        for d in DIRECTIONS:
            mode = own.get(d) or _global.get(d, _global.get(None))
            if mode is None:
                default = default or get_dispatch()
                mode = default
            modes[d] = mode
        return modes

    def _choose(self, modes, x, values, bias, spec, parts, density):
        """The Choice for this call (calibrating on these inputs if "auto" meets a new key) and its record."""
        linear = isinstance(spec.geometry, LinearGeometry)
        key = f"{spec.signature}|{input_signature(x, linear)}|d{density_bucket(density)}"
        record = {"key": key, "density": round(float(density), 6), "modes": modes, "ms": None}
        if "auto" not in modes.values():
            return Choice(*(modes[d] for d in DIRECTIONS)), dict(record, source="forced")
        if x.numel() == 0 or values.numel() == 0:
            return Choice(*(m if m != "auto" else "sparse" for m in modes.values())), dict(record, source="empty")
        store = _store(x.device)
        entry = store.entries.get(key)
        source = "cache"
        if entry is None:
            weight = self.weight(parts, spec)
            entry = calibrate(candidates(spec, x, values, bias, weight), x.device)
            store.put(key, entry)
            source = "calibrated"
        choice = Choice(*(entry[d] if modes[d] == "auto" else modes[d] for d in DIRECTIONS))
        return choice, dict(record, source=source, ms=entry.get("ms"))

    def weight(self, parts, spec):
        """The layer's dense weight, refreshed incrementally from ``parts``."""
        if self.dense is None or self.dense.geometry != spec.geometry:
            self.dense = DenseWeight(spec.geometry)
        return self.dense.refresh(parts)

    def __call__(self, x, values, bias, make_spec, density, sparse_call, dense_grad_hook=None, extra_parts=()):
        """Run one layer call.

        x, values, bias: the layer's input, sparse values (the only weight that gets a gradient) and bias or None;
        make_spec(): its ``DispatchSpec`` (built only when a direction may go dense); density: its active fraction
        (picks the calibration bucket); sparse_call(): its usual sparse op call, run when every direction is sparse;
        dense_grad_hook: as the sparse ops take it; extra_parts: further (values, ActiveIndex) of the dense weight
        that get no gradient (a union layer's frozen values), beside (values, spec.index)."""
        if torch.compiler.is_compiling():
            return sparse_call()
        modes = self.modes()
        # the decision depends only on this key (while the layer's shape stays): decided once, not per call
        memo_key = (tuple(modes.values()), tuple(x.shape), x.stride(), x.dtype, x.device, density)
        decided = self._memo.get(memo_key)
        spec = None
        if decided is None:
            if all(m == "sparse" for m in modes.values()):
                choice, record = Choice(), {"source": "forced", "density": round(float(density), 6), "key": None,
                                            "modes": modes, "ms": None}
            else:
                spec = make_spec()
                choice, record = self._choose(modes, x, values, bias, spec, [(values, spec.index), *extra_parts],
                                              density)
            record["choice"] = choice._asdict()
            if len(self._memo) >= 16:
                self._memo.clear()
            decided = self._memo[memo_key] = (choice, record)
        choice, self.last = decided
        if choice.all_sparse:
            return sparse_call()
        spec = spec or make_spec()
        parts = [(values, spec.index), *extra_parts]
        return dense_or_sparse(x, values, bias, spec, choice, lambda: self.weight(parts, spec), dense_grad_hook)


class DispatchMixin:
    """For nn.Modules that dispatch: ``dispatch`` (the override, settable), ``dispatch_choice`` and the
    ``dispatcher`` (created on first use, not saved in state_dict)."""

    @property
    def dispatcher(self):
        d = self.__dict__.get("_dispatcher")
        if d is None:
            d = self.__dict__["_dispatcher"] = Dispatcher()
        return d

    @property
    def dispatch(self):
        """This layer's mode override: None (inherit), or {direction: mode}. Set a mode string or such a dict."""
        return self.dispatcher.override

    @dispatch.setter
    def dispatch(self, value):
        self.dispatcher.override = normalize_override(value)

    @property
    def dispatch_choice(self):
        """{"forward", "dx", "dw"} -> "sparse" | "dense" of the last call (None before the first call)."""
        last = self.dispatcher.last
        return dict(last["choice"]) if last else None


def dispatch_report(model):
    """{module name: record} for every dispatching layer of ``model``: "choice" (per direction), "source"
    ("calibrated" | "cache" | "forced" | "compiled" | "empty"), "density", "key", "modes", "ms" (calibration
    times in ms, sparse and dense per direction, or None). Layers not run yet report None."""
    return {name: (dict(m.dispatcher.last) if m.dispatcher.last else None)
            for name, m in model.named_modules() if isinstance(m, DispatchMixin)}


__all__ = ["DispatchMixin", "Dispatcher", "cache_info", "cache_path", "dispatch_report", "get_dispatch",
           "set_dispatch", "use_dispatch"]
