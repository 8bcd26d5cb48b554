"""Every script in ``examples/`` runs to completion in its fast mode, so examples cannot rot.

Each ``examples/*.py`` (found by glob, so new examples are covered automatically) is run
in a fresh interpreter with ``ROOTDIFF_FAST=1`` (small sizes, few steps) and
``ROOTDIFF_OUT`` pointing to a temporary directory for its pictures. An example checks
its own derivatives and exits non-zero when a check fails; this test asserts exit code
0 and no ``rootdiff.ConvergenceWarning`` on stderr, and shows the script's output
otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 300


def test_examples_are_found():
    assert EXAMPLES, f"no examples found in {EXAMPLES_DIR}"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_fast_mode(script: Path, tmp_path: Path):
    env = {
        **os.environ,
        "ROOTDIFF_FAST": "1",
        "ROOTDIFF_OUT": str(tmp_path),
        "MPLBACKEND": "Agg",
    }
    env.pop("JAX_ENABLE_X64", None)  # each example chooses its own precision
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
    )
    assert result.stdout.strip(), f"{script.name} printed nothing"
    assert "Traceback" not in result.stderr, result.stderr[-6000:]
    # A converged example emits no convergence warnings (they go to stderr).
    assert "ConvergenceWarning" not in result.stderr, result.stderr[-6000:]
