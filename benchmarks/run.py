"""Run every benchmark and print one table.

Usage::

    python benchmarks/run.py                 # full sizes (several minutes)
    python benchmarks/run.py --quick         # small sizes (< 2 min)
    python benchmarks/run.py --quick --rootdiff-only  # rootdiff's rows only (test suite)
    python benchmarks/run.py --only ridge    # one workload (repeatable; see --list)
    python benchmarks/run.py --json out.json # also write the rows as JSON

Every workload runs rootdiff and its peers in this one process (peak-memory
measurements spawn one extra process per implementation). Missing peers, and
rootdiff features that have not landed yet, appear as SKIPPED rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from benchmarks import _common  # noqa: E402
from benchmarks._common import Row, format_table  # noqa: E402

MODULES = ["ridge", "layers", "qp", "eq_qp", "fixed_point", "scaling", "lasso"]


def workloads() -> dict:
    out = {}
    for mod in MODULES:
        try:
            m = importlib.import_module(f"benchmarks.{mod}")
        except Exception as e:  # noqa: BLE001
            out[mod] = e
            continue
        out.update(m.WORKLOADS)
    return out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({dev.platform}), Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and repeats (CI)")
    p.add_argument("--rootdiff-only", action="store_true", help="with --quick: leave out the peers")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="workload name")
    p.add_argument("--list", action="store_true", help="list workload names and exit")
    p.add_argument("--json", metavar="PATH", help="write rows as JSON")
    a = p.parse_args(argv)
    if a.rootdiff_only:
        if not a.quick:
            p.error("--rootdiff-only goes with --quick")
        _common.ROOTDIFF_ONLY = True
    wl = workloads()
    if a.list:
        print("\n".join(wl))
        return 0
    unknown = [n for n in a.only if n not in wl]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {list(wl)}")
    names = a.only or list(wl)
    print(f"# rootdiff benchmarks ({'quick' if a.quick else 'full'}) on {machine()}", flush=True)
    rows: list[Row] = []
    t_all = time.perf_counter()
    for name in names:
        fn = wl[name]
        t0 = time.perf_counter()
        if isinstance(fn, Exception):
            rows.append(Row(name, "—", note=f"ERROR importing: {fn}"))
            continue
        try:
            new = fn(quick=a.quick)
        except Exception as e:  # noqa: BLE001 - keep the other workloads going
            new = [Row(name, "—", note=f"ERROR {type(e).__name__}: {e}".splitlines()[0][:160])]
        rows += new
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if a.json:  # written after every workload, so a long run leaves partial results
            _write_json(a.json, rows, a.quick)
    print(format_table(rows))
    print(f"# total {time.perf_counter() - t_all:.1f} s")
    if a.json:
        _write_json(a.json, rows, a.quick)
    return 0


def _write_json(path: str, rows: list[Row], quick: bool) -> None:
    from benchmarks._common import fill_ratios

    fill_ratios(rows)
    with open(path, "w") as f:
        payload = {"machine": machine(), "quick": quick, "rows": [r.to_dict() for r in rows]}
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
