"""Crash-safe file output: write to a temp file in the same directory, fsync, then rename.

Fault injection (testing aid, tests/reliability/test_crash.py): with ``SPARSECL_CRASH_AT=PHASE:N`` in the
environment the process SIGKILLs itself the N-th time a write reaches PHASE: ``partial`` (half the bytes
written, not synced), ``written`` (all written, before fsync), ``synced`` (before the rename) or ``renamed``
(before the directory fsync). ``PHASE:N:NAME`` counts only writes of files whose name ends with NAME.
"""
import json
import os
import signal
import tempfile

_CRASH_PHASES = ("partial", "written", "synced", "renamed")
_crash_counts = dict.fromkeys(_CRASH_PHASES, 0)


def _crash_point(phase, path):
    spec = os.environ.get("SPARSECL_CRASH_AT")
    if not spec:
        return
    want, n, name = (spec.split(":", 2) + [""])[:3]
    if want not in _CRASH_PHASES or not n.isdigit():
        raise ValueError(f"SPARSECL_CRASH_AT must be PHASE:N[:NAME] with PHASE in {_CRASH_PHASES}, got {spec!r}")
    if want == phase and path.endswith(name):
        _crash_counts[phase] += 1
        if _crash_counts[phase] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)


def write_bytes_atomic(path, data):
    """Replace ``path`` with ``data`` so that readers see either the old or the new file, never a torn one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(memoryview(data)[:half])
            f.flush()
            _crash_point("partial", path)
            f.write(memoryview(data)[half:])
            f.flush()
            _crash_point("written", path)
            os.fsync(f.fileno())
        _crash_point("synced", path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _crash_point("renamed", path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json_atomic(path, obj):
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
