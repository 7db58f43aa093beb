"""Kill driver for tests/reliability/test_crash.py: runs ``sparsecl continual --resume`` lives in forked
processes and SIGKILLs them at the planned points.

    python -m tests.reliability._crash_driver PLAN.json REPORT.json

The driver imports sparsecl once and forks one child per life (a fork skips the ~2 s interpreter and
torch start-up that a fresh subprocess pays per life); each child is a separate process that runs the
CLI entry point, and SIGKILL ends it with no cleanup, exactly as for a standalone process. The driver runs
no torch op itself, so no OpenMP pool exists when it forks. Plan kills:
  {"kind": "save", "at": "PHASE:N:checkpoint.pt"}  the child kills itself inside its N-th checkpoint
                                                   write (SPARSECL_CRASH_AT, see sparsecl.io)
  {"kind": "async", "delay": S}                    once the child has written a checkpoint, the driver
                                                   waits S seconds and sends SIGKILL, wherever it is
After each kill the driver copies the checkpoint (if any) for the test to verify and lists temp files.
A life that finishes without being killed completes its chain (its outputs are kept); the next kill
starts a new chain in a fresh directory.
"""
import json
import os
import shutil
import signal
import sys
import time
import traceback

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401  (import everything a life imports lazily before forking)
import sklearn.datasets  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  (torch.optim imports it on first optimizer construction)

import sparsecl.cli as cli  # noqa: E402
import sparsecl.continual.run  # noqa: E402,F401
import sparsecl.continual.trainer  # noqa: E402,F401
import sparsecl.dst  # noqa: E402,F401
import sparsecl.nn  # noqa: E402,F401


def _stamp(path):
    try:
        st = os.stat(path)
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _life(argv, crash_at=None):
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            if crash_at:
                os.environ["SPARSECL_CRASH_AT"] = crash_at
            else:
                os.environ.pop("SPARSECL_CRASH_AT", None)
            rc = cli.main(argv) or 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    return pid


def _wait(pid, ckpt, delay):
    """For an async kill: wait until the child writes a checkpoint, then ``delay`` s more, then SIGKILL."""
    if delay is not None:
        before = _stamp(ckpt)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if _stamp(ckpt) != before:
                break
            time.sleep(0.002)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def main(plan_path, report_path):
    plan = json.load(open(plan_path))
    base, snaps = plan["out"], plan["snapshots"]
    os.makedirs(snaps, exist_ok=True)
    report = {"lives": [], "chains": []}
    t0 = time.perf_counter()
    status = os.waitpid(_life(plan["args"] + ["--out", plan["reference"]]), 0)[1]
    report["reference_exit"] = os.waitstatus_to_exitcode(status)
    report["reference_seconds"] = time.perf_counter() - t0
    chain = 0
    out = f"{base}-{chain}"
    kills = list(plan["kills"])
    while kills and len(report["lives"]) < 3 * len(plan["kills"]):
        k = kills[0]
        ckpt = os.path.join(out, "checkpoint.pt")
        t1 = time.perf_counter()
        pid = _life(plan["args"] + ["--out", out, "--resume"], k.get("at"))
        status = _wait(pid, ckpt, k.get("delay"))
        rec = {**k, "chain": chain, "seconds": time.perf_counter() - t1,
               "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
               "exit": os.waitstatus_to_exitcode(status)}
        rec["temp_files"] = sorted(f for f in os.listdir(out) if f.startswith(".tmp-")) if os.path.isdir(out) else []
        rec["metrics_written"] = os.path.exists(os.path.join(out, "metrics.json"))
        rec["snapshot"] = None
        if os.path.exists(ckpt):
            rec["snapshot"] = os.path.join(snaps, f"{len(report['lives']):03d}.pt")
            shutil.copyfile(ckpt, rec["snapshot"])
        report["lives"].append(rec)
        if rec["killed"]:
            kills.pop(0)
        else:  # the run finished before the planned kill point: its chain is complete
            report["chains"].append({"out": out, "exit": rec["exit"]})
            chain += 1
            out = f"{base}-{chain}"
    t1 = time.perf_counter()
    status = os.waitpid(_life(plan["args"] + ["--out", out, "--resume"]), 0)[1]
    report["chains"].append({"out": out, "exit": os.waitstatus_to_exitcode(status),
                             "final_seconds": time.perf_counter() - t1})
    report["seconds"] = time.perf_counter() - t0
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
