"""Smoke test of the benchmark suite: ``python benchmarks/run.py --quick --rootdiff-only``.

Runs in a subprocess (its own JAX configuration), asserts that it exits 0 and
prints the table, and that rootdiff's float64 gradients in it meet the accuracy
bar (relative error ≤ 1e-8 against each workload's independent reference).
The checks concern rootdiff's rows only, so the peers (timed in the full and
``--quick`` runs) are left out here: they would double the run for nothing checked.
Rows that are SKIPPED (peers left out, rootdiff features not landed) are allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCURACY_BAR = 1e-8


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "rows.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--rootdiff-only",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    return proc, rows


def test_quick_run_exits_cleanly_and_prints_table(quick_run):
    proc, rows = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| workload | implementation | compile s | run ms |" in proc.stdout
    assert rows, "no rows written"
    errors = [r for r in rows if r["note"].startswith("ERROR")]
    assert not [r for r in errors if r["is_rootdiff"]], errors


def test_every_workload_has_a_rootdiff_row(quick_run):
    _, rows = quick_run
    workloads = {r["workload"] for r in rows}
    for w in workloads:
        mine = [r for r in rows if r["workload"] == w and r["is_rootdiff"]]
        skipped = [r for r in rows if r["workload"] == w and r["note"].startswith("SKIPPED")]
        assert mine or skipped, f"{w}: neither a rootdiff row nor a SKIPPED one"


def test_rootdiff_gradients_meet_accuracy_bar(quick_run):
    _, rows = quick_run
    checked = 0
    for r in rows:
        if not r["is_rootdiff"] or r["grad_err"] is None or r["workload"].endswith("K=10"):
            continue
        if r["float64"]:
            assert r["grad_err"] <= ACCURACY_BAR, r
        else:  # float32 workloads: within a few float32 ulps of the float64 reference
            assert r["grad_err"] <= 1e-5, r
        checked += 1
    assert checked >= 3


def test_docs_summary_matches_committed_results():
    """The summary that opens docs/benchmarks.md is generated from the committed rows."""
    sys.path.insert(0, ROOT)
    from benchmarks.targets import SUMMARY_SKIP, summary

    with open(os.path.join(ROOT, "benchmarks", "results_full.json")) as f:
        rows = json.load(f)["rows"]
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as f:
        page = f.read()
    table = summary(rows)
    table_rows = [line for line in table.splitlines() if line.startswith("|")]
    shown = {r["workload"] for r in rows if not r["workload"].startswith(SUMMARY_SKIP)}
    assert len(table_rows) == 2 + len(shown)  # one per workload
    assert table in page, "regenerate: python benchmarks/targets.py --summary ..."
    assert page.index(table) < page.index("## Protocol"), "the summary opens the page"
