"""Every script in ``examples/`` runs to completion in its fast mode, so examples cannot rot.

The convention for examples (new ones are picked up without editing this file):

* every ``examples/*.py`` not starting with ``_`` is found by glob and run as
  ``__main__``, with the working directory a temporary folder and JAX's default
  configuration (float32: each example chooses its own precision);
* it reads ``ROOTDIFF_FAST`` (set to ``1`` here: small sizes, few steps, a few seconds)
  and writes any picture into ``$ROOTDIFF_OUT`` (a temporary folder here; default: the
  current directory);
* it checks its own claims (derivatives against finite differences or closed forms;
  in full mode, a claimed win over its baseline) and exits non-zero when one fails;
* it prints what it shows, and no ``rootdiff.ConvergenceWarning``.

This module asserts exit status 0, some output and no convergence warning, and shows
the script's output otherwise.

The scripts run in this test process (``runpy``), not each in a fresh interpreter:
that saves the imports of JAX, rootdiff, scikit-learn and matplotlib (about 1.5–3 CPU
seconds each) and lets every small eager operation compiled by one example serve the
next. An example that must configure JAX before importing it — one that asks for
several host devices with ``XLA_FLAGS`` — runs in a subprocess instead.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 300
#: Text that marks a script needing its own interpreter (JAX configured before import).
OWN_PROCESS = "xla_force_host_platform_device_count"


def test_examples_are_found():
    assert EXAMPLES, f"no examples found in {EXAMPLES_DIR}"


def test_every_example_has_a_fast_mode():
    """The suite runs examples with ROOTDIFF_FAST=1; one that ignores it runs at full size."""
    missing = [p.name for p in EXAMPLES if "ROOTDIFF_FAST" not in p.read_text(encoding="utf-8")]
    assert not missing, f"examples that do not read ROOTDIFF_FAST: {missing}"


def _run_in_subprocess(script: Path, tmp_path: Path) -> tuple[int, str, str]:
    env = {**os.environ, "ROOTDIFF_FAST": "1", "ROOTDIFF_OUT": str(tmp_path), "MPLBACKEND": "Agg"}
    env.pop("JAX_ENABLE_X64", None)  # each example chooses its own precision
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def _run_in_process(script: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setenv("ROOTDIFF_FAST", "1")
    monkeypatch.setenv("ROOTDIFF_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script)])
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # JAX's default, as in a fresh interpreter
    code: int | str | None = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as e:
                code = e.code
    finally:
        jax.config.update("jax_enable_x64", x64)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    out, err = capsys.readouterr()
    for w in caught:  # as a fresh interpreter would print them on stderr
        err += warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    return (0 if code is None else code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_fast_mode(script: Path, tmp_path: Path, monkeypatch, capsys):
    if OWN_PROCESS in script.read_text(encoding="utf-8"):
        returncode, stdout, stderr = _run_in_subprocess(script, tmp_path)
    else:
        returncode, stdout, stderr = _run_in_process(script, tmp_path, monkeypatch, capsys)
    assert returncode == 0, (
        f"{script.name} exited with {returncode}\n"
        f"--- stdout ---\n{stdout[-6000:]}\n--- stderr ---\n{stderr[-6000:]}"
    )
    assert stdout.strip(), f"{script.name} printed nothing"
    assert "Traceback" not in stderr, stderr[-6000:]
    # A converged example emits no convergence warnings.
    assert "ConvergenceWarning" not in stderr, stderr[-6000:]
