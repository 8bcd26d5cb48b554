"""Shared helpers: timing, gradient error, result rows, per-process peak memory.

Timing protocol (issue 5): the function timed is ``jax.jit(jax.value_and_grad(loss))``
exactly as a user writes it. Compile time is ``jit(f).lower(*args).compile()``;
the compiled executable is then called once (warm-up, excluded) and ``repeats``
more times, each call followed by ``jax.block_until_ready``; the median is reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    workload: str
    impl: str
    compile_s: float | None = None
    run_ms: float | None = None
    grad_err: float | None = None
    ratio: float | None = None  # run time / rootdiff's run time (filled by the table)
    mem_mb: float | None = None  # peak RSS added by this implementation, own process
    xla_temp_mb: float | None = None  # XLA's planned temporary buffers of the jitted call
    note: str = ""
    is_rootdiff: bool = False
    float64: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Peers left out of ``--quick`` runs (to keep the CI smoke test under two minutes):
#: tolerance variants and the slowest-compiling peers. They run in the full mode.
QUICK_OMIT = ("tol=1e-10", "backend='i'", "OSQP", "default normal_cg", "EqualityConstrainedQP (tol")


#: Set by ``run.py --rootdiff-only``: ``--quick`` runs then leave out every peer too
#: (the test suite's smoke run, whose checks concern rootdiff's rows only).
ROOTDIFF_ONLY = False


def omitted_in_quick(impl: str) -> bool:
    if ROOTDIFF_ONLY and not impl.startswith("rootdiff"):
        return True
    return any(key in impl for key in QUICK_OMIT)


def skipped(workload: str, impl: str, why: str) -> Row:
    """A row for an implementation that could not run (peer missing, API not landed)."""
    return Row(workload, impl, note=f"SKIPPED: {why}")


#: A call slower than this (warm-up) is timed with the minimum 5 repeats.
FEWER_REPEATS_S = 1.0
#: A call slower than this is reported from its single (warm-up) call, with a note.
SINGLE_CALL_S = 20.0


def time_jitted(fn: Callable[..., Any], args: tuple, repeats: int = 5) -> tuple[float, float, Any]:
    """Compile ``jax.jit(fn)`` for ``args`` and time it.

    Returns ``(compile_seconds, median_run_milliseconds, output)``; the compiled
    executable's XLA temp size (MiB) is left in ``time_jitted.last_temp_mb``. Calls
    slower than :data:`FEWER_REPEATS_S` get the minimum of 5 timed repeats; calls
    slower than :data:`SINGLE_CALL_S` are timed once (``time_jitted.single_call``).
    """
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    try:
        time_jitted.last_temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        time_jitted.last_temp_mb = None
    # Timed through ``jitted``, the call users make: it reuses the executable just
    # compiled (first call ~1 ms), and takes JAX's C++ dispatch path, which a
    # ``Compiled`` object skips when the program has a host callback (the checks'
    # reports: +35 µs per call measured).
    t0 = time.perf_counter()
    out = jax.block_until_ready(jitted(*args))  # warm-up, excluded
    warm_s = time.perf_counter() - t0
    time_jitted.single_call = warm_s > SINGLE_CALL_S
    if time_jitted.single_call:  # too slow for the median protocol: report this call
        return compile_s, 1e3 * warm_s, out
    times = []
    for _ in range(5 if warm_s > FEWER_REPEATS_S else max(repeats, 5)):
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, 1e3 * statistics.median(times), out


def rel_err(g: Any, g_ref: Any) -> float:
    """``‖g − g_ref‖ / ‖g_ref‖`` over all leaves of two pytrees (computed in float64)."""
    a = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)]
    b = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g_ref)]
    a, b = np.concatenate(a), np.concatenate(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def bench(
    workload: str,
    impl: str,
    fn: Callable[..., Any],
    args: tuple,
    grad_ref: Any,
    *,
    repeats: int = 5,
    grad_of: Callable[[Any], Any] = lambda out: out[1],
    rootdiff: bool = False,
    float64: bool = True,
    note: str = "",
) -> Row:
    """Time ``fn(*args)`` (a ``value_and_grad``) and compare its gradient to ``grad_ref``.

    Any exception becomes a row with the error in its note, so one failing peer
    never hides the others.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c, r, out = time_jitted(fn, args, repeats)
        err = rel_err(grad_of(out), grad_ref) if grad_ref is not None else None
        row = Row(workload, impl, c, r, err, note=note, is_rootdiff=rootdiff, float64=float64)
        row.xla_temp_mb = time_jitted.last_temp_mb
        if time_jitted.single_call:
            row.note = (row.note + f" one call (> {SINGLE_CALL_S:.0f} s), not a median").strip()
        return row
    except Exception as e:  # noqa: BLE001 - report, do not crash the whole table
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:120]
        return Row(workload, impl, note=f"ERROR {msg}", is_rootdiff=rootdiff)


def bench_all(
    workload: str,
    impls: dict[str, Any],
    args: tuple,
    grad_ref: Any,
    *,
    quick: bool,
    repeats: int,
    differentiate: Callable[[Callable[..., Any]], Callable[..., Any]] = jax.value_and_grad,
    float64: bool = True,
    memory: Callable[[str], tuple[str, dict[str, Any]]] | None = None,
    note_rootdiff: str = "",
) -> list[Row]:
    """Benchmark every implementation of one workload; one :class:`Row` each.

    Args:
      impls: ``name -> loss``; a value that is ``None`` (peer not installed) or a
        string (why it cannot run) gives a SKIPPED row. Names starting with
        ``rootdiff`` are rootdiff's rows; :func:`omitted_in_quick` names are skipped
        in ``--quick``.
      differentiate: turns a loss into the timed function (default
        ``jax.value_and_grad``; e.g. ``vmap`` of it for batched workloads).
      memory: ``impl -> (module, case)``; when given (full mode only), each
        implementation's peak RSS is re-measured alone in a fresh process
        (:func:`measure_in_subprocess`) and stored in ``Row.mem_mb``.
      note_rootdiff: appended to the note of rootdiff's rows.
    """
    rows = []
    for impl, loss in impls.items():
        if loss is None or isinstance(loss, str):
            rows.append(skipped(workload, impl, loss or "not installed"))
            continue
        if quick and omitted_in_quick(impl):
            rows.append(skipped(workload, impl, "omitted in --quick"))
            continue
        mine = impl.startswith("rootdiff")
        row = bench(
            workload, impl, differentiate(loss), args, grad_ref, repeats=repeats,
            rootdiff=mine, float64=float64,
        )  # fmt: skip
        if mine and note_rootdiff:
            row.note = (row.note + " " + note_rootdiff).strip()
        if memory is not None and not quick and row.run_ms is not None:
            add_peak_memory(row, *memory(impl))
        rows.append(row)
    return rows


def add_peak_memory(row: Row, module: str, case: dict[str, Any]) -> None:
    """Fill ``row.mem_mb`` from a fresh-process measurement (or note the failure)."""
    rep = measure_in_subprocess(module, case)
    if "error" in rep:
        row.note = (row.note + f" (memory run failed: {rep['error']})").strip()
    else:
        row.mem_mb = rep["peak_mb"] - rep["base_mb"]


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; Linux only.

    Without it, the peak reached while *building the data* (numpy temporaries)
    would mask what the implementation itself adds.
    """
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: VmHWM (honours
    :func:`reset_peak_rss`), else ``ru_maxrss`` (Linux reports KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process, in MiB (from /proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def measure_in_subprocess(module: str, case: dict[str, Any], timeout: float = 600) -> dict:
    """Run ``python -m benchmarks.<module> --memcase JSON`` and return its JSON reply.

    The child builds the problem, resets the peak-RSS counter and records its
    current RSS *before* compiling (``base_mb``), compiles and runs the case, and
    reports the peak RSS after (``peak_mb``); ``peak_mb - base_mb`` is what the
    implementation added (compilation included).
    """
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--memcase", json.dumps(case)]
    root = os.path.dirname(HERE)
    try:
        proc = subprocess.run(
            cmd, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("MEMCASE "):
            return json.loads(line[len("MEMCASE ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0][:160]}


def memcase_measure(fn: Callable[..., Any], args: tuple) -> None:
    """Child-process side of :func:`measure_in_subprocess`: compile and run ``fn``
    once on ``args`` (already built), and print the peak RSS it added.

    The kernel's peak counter is reset first, so the data build does not mask the
    implementation's own peak.
    """
    reset_peak_rss()
    base = current_rss_mb()
    jax.block_until_ready(jax.jit(fn).lower(*args).compile()(*args))
    print("MEMCASE " + json.dumps({"base_mb": base, "peak_mb": peak_rss_mb()}), flush=True)


# --------------------------------------------------------------------------- table


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def fill_ratios(rows: list[Row]) -> None:
    """``ratio = run_ms / run_ms(rootdiff)`` per workload (first rootdiff row)."""
    base: dict[str, float] = {}
    for r in rows:
        if r.is_rootdiff and r.run_ms is not None and r.workload not in base:
            base[r.workload] = r.run_ms
    for r in rows:
        if r.run_ms is not None and r.workload in base:
            r.ratio = r.run_ms / base[r.workload]


def format_table(rows: list[Row]) -> str:
    """A Markdown table of the rows (ratios filled in first)."""
    fill_ratios(rows)
    show_mem = any(r.mem_mb is not None or r.xla_temp_mb is not None for r in rows)
    head = ["workload", "implementation", "compile s", "run ms", "ratio to rootdiff"]
    head += ["rel. grad error"] + (["peak RSS Δ MiB", "XLA temp MiB"] if show_mem else [])
    head += ["note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.workload,
            r.impl,
            _fmt(r.compile_s, ".2f"),
            _fmt(r.run_ms, ".3g"),
            _fmt(r.ratio, ".2f"),
            _fmt(r.grad_err, ".1e"),
        ]
        if show_mem:
            cells += [_fmt(r.mem_mb, ".0f"), _fmt(r.xla_temp_mb, ".0f")]
        cells.append(r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def f64(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float64)
