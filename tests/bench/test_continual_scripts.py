"""Smoke runs of the continual benchmark drivers' --quick modes (bench/continual_findings.py,
bench/continual_flatness.py): they run end to end and write their files with the figures they computed."""
import json
import os

from bench import continual_findings, continual_flatness


def test_findings_quick_writes_both_protocols(tmp_path):
    out = continual_findings.main(["--quick", "--out", str(tmp_path)])
    with open(os.path.join(out, "findings.json")) as f:
        res = json.load(f)
    cells = len(continual_findings.INITS) * len(continual_findings.GROWTHS) * len(continual_findings.DENSITIES)
    assert {r["reuse"] for r in res["runs"]} == {"mask", "all"} and len(res["runs"]) == 2 * cells
    assert all(0.0 <= r["ACC"] <= 1.0 for r in res["runs"])
    # reuse: mask keeps each task at density d; reuse: all reads the union, which is larger from task 2 on
    for r in res["runs"]:
        if r["reuse"] == "mask":
            assert abs(r["subnetwork_density_last"] - r["density"]) < 0.002
        else:
            assert r["subnetwork_density_last"] > r["density"]
    assert set(res["findings"]) == {"mask", "all"}
    assert all(len(v) == 3 for v in res["findings"].values())
    md = open(os.path.join(out, "findings.md")).read()
    assert "d=0.2 mask | d=0.2 all" in md and "ISA" in md
    assert os.path.getsize(os.path.join(out, "findings.png")) > 0


def test_flatness_quick_reports_ratios(tmp_path):
    out = continual_flatness.main(["--quick", "--out", str(tmp_path)])
    with open(os.path.join(out, "metrics.json")) as f:
        res = json.load(f)
    flat = res["flatness"]
    for clock in ("wall", "cpu"):
        r = flat[clock]["per_task"]
        assert len(r) == 10 and all(x > 0 for x in r)
        assert flat[clock]["holds"] == (r[-1] >= continual_flatness.BAR * r[0])
    assert len(flat["breakdown"]) == 10 and all(row["steps"] >= 1 for row in flat["breakdown"])
    assert all(abs(t["subnetwork_density"] - 0.1) < 0.002 for t in res["tasks"])
    assert os.path.exists(os.path.join(out, "summary.md")) and os.path.exists(os.path.join(out, "ratio.png"))
    # the warm-up run calibrated every layer geometry: the measured run found each choice in the cache
    assert flat["warm_cache"] and all(set(row["dispatch_sources"]) <= {"cache", "empty"}
                                      for row in flat["breakdown"]), [r["dispatch_sources"] for r in flat["breakdown"]]
    os.remove(os.path.join(out, "summary.md"))
    continual_flatness.main(["--report-only", "--out", out])  # the report again from metrics.json alone
    assert "| wall |" in open(os.path.join(out, "summary.md")).read()


def test_warm_up_meets_the_measured_runs_batch_keys():
    for per_class in (1, 2, 7, 50, 160, 200, 250, 500):
        p = continual_flatness.warm_per_class(per_class, 10)
        assert p * 10 >= 64
        assert continual_flatness._pow2_tail(p * 10) == continual_flatness._pow2_tail(per_class * 10)
