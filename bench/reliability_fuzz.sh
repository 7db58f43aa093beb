#!/usr/bin/env bash
# Long fuzz run: every fuzz target of tests/reliability under the "long" hypothesis profile (10,000 examples
# per target, fresh random seeds), one pytest process per file so a crash in one cannot hide the others.
# Writes bench/results/reliability/fuzz-long-<date>.json and .md: executions per target, time, outcome.
#   nice -n 15 bench/reliability_fuzz.sh [test_fuzz_file.py | test_fuzz_file.py::test[param] ...]
#   (default: all tests/reliability/test_fuzz_*.py; several invocations on one day merge into one record)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=bench/results/reliability
mkdir -p "$OUT"
DATE=$(date -u +%Y-%m-%d)
LOGDIR=$(mktemp -d)
FILES=("$@")
[ ${#FILES[@]} -eq 0 ] && FILES=(tests/reliability/test_fuzz_*.py)
for f in "${FILES[@]}"; do  # a file, or a pytest node id (file::test[param]) for one target
  target="tests/reliability/${f#tests/reliability/}"
  name=$(echo "${f#tests/reliability/}" | tr -c 'A-Za-z0-9_\n' '_')
  start=$(date +%s)
  SPARSECL_HYPOTHESIS_PROFILE=long "$PY" -m pytest -q -p no:cacheprovider --hypothesis-show-statistics \
    -k "not test_valid_base_case_runs" "$target" > "$LOGDIR/$name.log" 2>&1
  echo "$? $(( $(date +%s) - start ))" > "$LOGDIR/$name.rc"
  tail -1 "$LOGDIR/$name.log"
done
"$PY" - "$LOGDIR" "$OUT" "$DATE" <<'PYEOF'
"""Parse hypothesis statistics into the JSON/MD record (merged with an existing record of the same date)."""
import json, os, platform, re, sys

logdir, out, date = sys.argv[1:4]
path = os.path.join(out, f"fuzz-long-{date}.json")
rec = json.load(open(path)) if os.path.exists(path) else {"date": date, "profile": "long", "files": {}, "targets": {}}
rec["machine"] = {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                  "processor": platform.processor() or platform.machine(),
                  "note": "2-core shared machine, other jobs running; run under nice -n 15"}
import torch, hypothesis
rec["versions"] = {"torch": torch.__version__, "hypothesis": hypothesis.__version__}
for log in sorted(f for f in os.listdir(logdir) if f.endswith(".log")):
    name = log[:-4]
    rc, secs = open(os.path.join(logdir, name + ".rc")).read().split()
    text = open(os.path.join(logdir, log)).read()
    rec["files"][name] = {"exit_code": int(rc), "seconds": int(secs), "summary": text.strip().splitlines()[-1]}
    for block in re.split(r"\n(?=tests/reliability/\S+::\S+:\n)", text):
        m = re.match(r"(tests/reliability/\S+::\S+):\n", block)
        if not m:
            continue
        runs = lambda kind: sum(int(x) for x in re.findall(rf"(\d+) {kind}\b", block))  # noqa: E731
        stop = re.findall(r"Stopped because (.*)", block)
        rec["targets"][m.group(1)] = {"passing": runs("passing"), "failing": runs("failing"),
                                      "invalid": runs("invalid"), "stopped_because": stop[-1] if stop else "",
                                      "seconds": round(sum(float(x) for x in re.findall(r"phase \(([\d.]+) seconds\)", block)), 1)}
json.dump(rec, open(path, "w"), indent=1)
lines = [f"# Long fuzz run {date}", "", f"Machine: {rec['machine']}", "",
         "| target | executions (passing) | failing | invalid (filtered) | seconds | stopped because |",
         "|---|---|---|---|---|---|"]
for t, r in sorted(rec["targets"].items()):
    lines.append(f"| `{t.split('::', 1)[1]}` ({t.split('::')[0].split('/')[-1]}) | {r['passing']} | {r['failing']} | "
                 f"{r['invalid']} | {r['seconds']} | {r['stopped_because']} |")
lines += ["", "Files: " + ", ".join(f"{k}: exit {v['exit_code']} in {v['seconds']} s ({v['summary']})"
                                    for k, v in sorted(rec["files"].items()))]
open(os.path.join(out, f"fuzz-long-{date}.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
