"""Accuracy tests run in float64; float32 tests opt in with the ``float32`` fixture.

The ``quick`` marker (``python -m pytest -m quick``) selects a first-check subset:
about 80 CPU seconds (a minute on two idle cores), one or two tests of every public area in every
autodiff mode. It is applied here, from the list ``QUICK`` below, so that test
modules need no edits; ``tests/test_docs.py`` checks that every entry still
names a test.

Scheduling under pytest-xdist (``-n auto``): the work-stealing scheduler
(``--dist worksteal``) is the default here unless ``--dist`` is given. It hands
each worker a contiguous share of the suite, so a module's tests mostly run in one
process (its module-level compilations and fixtures happen once, not once per
worker), and an idle worker takes over the end of the other's queue. The modules
whose tests run for long (subprocesses: benchmarks, examples, docs) go first, so
that the run ends on short tests and both workers finish together.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# --- One JAX compilation cache per test run ------------------------------------
#
# Many tests and docs pages compile the same computation more than once (a new
# ``jax.jit`` or ``jax.grad`` object around the same function is compiled again),
# and the examples, docs pages and benchmark run in subprocesses. JAX's persistent
# compilation cache, in a temporary folder made for this run (by the first process:
# the pytest-xdist workers and every subprocess inherit its environment) and removed
# at its end, lets each such computation be compiled once per run. Measured on a
# docs page run in its own process: 22 % less CPU time with a cold cache. Nothing
# is kept between runs, and a cache the user set up (JAX_COMPILATION_CACHE_DIR) is
# used as it is; ROOTDIFF_TEST_JAX_CACHE=0 turns this off.
_CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
# Only on the jax versions where it was verified (0.10, 0.12): on jax 0.5.3 the cache
# handed a program compiled for one test's data-independent twin to the next, and
# Krylov solves returned zeros (tests/test_linear_solve.py in the quick subset).
_CACHE_VERIFIED = tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 10)
if os.environ.get("ROOTDIFF_TEST_JAX_CACHE", "1") != "0" and _CACHE_VERIFIED:
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        _cache_dir = tempfile.mkdtemp(prefix="rootdiff-tests-jax-cache-")
        atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
        for _name, _value in _CACHE_ENV.items():
            os.environ.setdefault(_name, _value)
    # jax may have been imported (by a plugin) before these variables were set.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    for _name in _CACHE_ENV:
        if os.environ.get(_name):
            _value = os.environ[_name]
            jax.config.update(_name.lower(), float(_value) if "SECS" in _name else int(_value))

# --- XLA's CPU code generation without LLVM optimisation ------------------------
#
# The suite's time goes to compiling, not to running: its problems are small, and
# most compiled programs run a handful of times. XLA's CPU backend optimises the
# generated code with LLVM (-O2 by default); at -O0 the same HLO programs compile
# about a third faster (measured: the batched-QP example 14.8 -> 10.4 CPU s, the
# infeasible-QP training example 25 -> 16.5) and run slower, which no test measures.
# The programs, their HLO optimisations and their float64 arithmetic are the same;
# what is not exercised is LLVM's optimisation of them. Set in the environment, so
# that pytest-xdist workers and subprocesses (examples, docs pages, the benchmark run)
# inherit it; it must precede JAX's backend initialisation (the first computation).
# ROOTDIFF_TEST_XLA_O0=0, or an optimisation level given in XLA_FLAGS, keeps XLA's.
_XLA_O0 = "--xla_backend_optimization_level=0"
if os.environ.get("ROOTDIFF_TEST_XLA_O0", "1") != "0":
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_O0}".strip()

#: Test ids (without parameters: every parametrisation is included) in the quick subset.
QUICK = [
    "tests/test_implicit.py::test_modes_match_unrolled",
    "tests/test_implicit.py::test_check_grads_finite_differences",
    "tests/test_implicit.py::test_root_jvp_and_vjp_match_closed_form",
    "tests/test_implicit.py::test_custom_fixed_point",
    "tests/test_implicit.py::test_backward_nonconvergence_warns_under_jit",
    "tests/test_implicit.py::test_error_unknown_solve_name",
    "tests/test_argmin.py::test_value_matches_closed_form",
    "tests/test_argmin.py::test_hessian",
    "tests/test_linear_solve.py::test_spd_system",
    "tests/test_linear_solve.py::test_nonsymmetric_system",
    "tests/test_bisection.py::test_all_modes_closed_form",
    "tests/test_projected_gradient.py::test_nnls_jacobian_closed_form",
    "tests/test_projections.py::test_derivatives_match_finite_differences",
    "tests/test_qp.py::test_grad_all_six_inputs_matches_active_set_reference",
    "tests/test_qp.py::test_shape_errors",
    "tests/test_eq_qp.py::test_grad_matches_dense_reference",
    "tests/test_layers.py::test_sparsemax_all_modes_closed_form",
    "tests/test_layers.py::test_lml_all_modes_closed_form",
    "tests/test_docs.py::test_page_code_runs[README.md]",
    "tests/test_docs.py::test_readme_commands_match_ci",
    "tests/test_docs.py::test_quick_subset_names_existing_tests",
]


def _quick_entry(nodeid: str) -> str | None:
    for entry in QUICK:
        if nodeid == entry or ("[" not in entry and nodeid.startswith(entry + "[")):
            return entry
    return None


#: Modules of long tests, run first (in this order); the others keep their order.
LONG_FIRST = ["tests/test_benchmarks.py", "tests/test_examples.py", "tests/test_docs.py"]


def pytest_configure(config: pytest.Config) -> None:
    explicit = any(a.startswith("--dist") for a in config.invocation_params.args)
    if getattr(config.option, "dist", "no") == "load" and not explicit:
        config.option.dist = "worksteal"


def _long_first(item: pytest.Item) -> int:
    module = item.nodeid.split("::", 1)[0]
    return LONG_FIRST.index(module) if module in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_long_first)  # stable: each module keeps its own order
    found = set()
    for item in items:
        entry = _quick_entry(item.nodeid)
        if entry is not None:
            item.add_marker(pytest.mark.quick)
            found.add(entry)
    collected_files = {item.nodeid.split("::", 1)[0] for item in items}
    # Entries whose module was collected but that matched no test (renamed or removed).
    config.stash[QUICK_MISSING] = [
        e for e in QUICK if e not in found and e.split("::", 1)[0] in collected_files
    ]


QUICK_MISSING = pytest.StashKey[list]()


@pytest.fixture
def float32():
    """Run a test with x64 disabled (float32 defaults), restoring it afterwards."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


# --- CPU time per test and per module (ROOTDIFF_TEST_TIMINGS=1) ---------------
#
# Wall times mislead on a loaded machine; CPU times (this process and the
# subprocesses it waited for: examples, docs pages, the benchmark run) do not.
# With ROOTDIFF_TEST_TIMINGS=1 (set by .ci/run), each test phase's CPU seconds
# travel with its report (also from pytest-xdist workers), and the run ends with
# the CPU time per module, the slowest tests, and the wall time this implies on two
# idle cores (total CPU / 2, when both workers stay busy to the end).

TIMINGS = os.environ.get("ROOTDIFF_TEST_TIMINGS", "") not in ("", "0")
CPU_KEY = "cpu_s"
_PHASE_START = pytest.StashKey[float]()
_CPU_PER_TEST: dict[str, float] = {}  # nodeid -> CPU seconds (in the process that reports)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _mark_phase_start(item: pytest.Item) -> None:
    if TIMINGS:
        item.stash[_PHASE_START] = _cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    _mark_phase_start(item)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    _mark_phase_start(item)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    _mark_phase_start(item)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    end = _cpu_seconds() if TIMINGS else 0.0
    outcome = yield
    if TIMINGS and _PHASE_START in item.stash:
        outcome.get_result().user_properties.append((CPU_KEY, end - item.stash[_PHASE_START]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == CPU_KEY:
            _CPU_PER_TEST[report.nodeid] = _CPU_PER_TEST.get(report.nodeid, 0.0) + value


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not TIMINGS or not _CPU_PER_TEST:
        return
    modules: dict[str, float] = {}
    for nodeid, cpu in _CPU_PER_TEST.items():
        module = nodeid.split("::", 1)[0]
        modules[module] = modules.get(module, 0.0) + cpu
    total = sum(modules.values())
    tr = terminalreporter
    tr.section("CPU time (ROOTDIFF_TEST_TIMINGS=1)")
    tr.write_line(f"{'CPU s':>8}  module")
    for module, cpu in sorted(modules.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"{cpu:8.1f}  {module}")
    tr.write_line(
        f"{total:8.1f}  in all, {len(_CPU_PER_TEST)} tests (without interpreter start-up and "
        f"collection): about {total / 120:.1f} min on two idle cores"
    )
    tr.write_line("slowest tests (CPU s):")
    for nodeid, cpu in sorted(_CPU_PER_TEST.items(), key=lambda kv: -kv[1])[:30]:
        tr.write_line(f"{cpu:8.1f}  {nodeid}")
