"""Accuracy tests run in float64; float32 tests opt in with the ``float32`` fixture.

The ``quick`` marker (``python -m pytest -m quick``) selects a first-check subset:
about a minute on two cores, one or two tests of every public area in every
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

import jax
import pytest

jax.config.update("jax_enable_x64", True)

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
