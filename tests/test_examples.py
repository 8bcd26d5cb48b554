"""Every script in ``examples/`` runs to completion in its fast mode, so examples cannot rot.

The convention for examples (new ones are picked up without editing this file):

* every ``examples/*.py`` not starting with ``_`` is found by glob and run as a script
  in a fresh interpreter, with the working directory a temporary folder;
* it reads ``ROOTDIFF_FAST`` (set to ``1`` here: small sizes, few steps, a few seconds)
  and writes any picture into ``$ROOTDIFF_OUT`` (a temporary folder here; default: the
  current directory);
* it checks its own claims (derivatives against finite differences or closed forms;
  in full mode, a claimed win over its baseline) and exits non-zero when one fails;
* it prints what it shows, and no ``rootdiff.ConvergenceWarning``.

This module asserts exit code 0, some output, no traceback and no convergence warning,
and shows the script's output otherwise.
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


def test_every_example_has_a_fast_mode():
    """The suite runs examples with ROOTDIFF_FAST=1; one that ignores it runs at full size."""
    missing = [p.name for p in EXAMPLES if "ROOTDIFF_FAST" not in p.read_text(encoding="utf-8")]
    assert not missing, f"examples that do not read ROOTDIFF_FAST: {missing}"


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
