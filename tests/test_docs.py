"""The documentation cannot drift from behaviour: every ```python block runs.

Each page of ``docs/**/*.md`` and ``README.md`` is one test. Its ``python`` code
blocks run in order in one namespace, as a reader would paste them, with JAX's
default float32 (x64 off) unless the page itself enables x64. A block preceded by
the comment ``<!-- skip -->`` is not run (only for code that needs something the
test machine lacks). A page containing ``<!-- test: devices=8 -->`` runs in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, so that
the multi-device guide is exercised on eight (host) devices.

Tracebacks point at the Markdown file and line of the failing code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
MULTI_DEVICE = "<!-- test: devices=8 -->"
SKIP = "<!-- skip -->"
FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every non-skipped ```python block."""
    lines = text.splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, lang = m["indent"], m["lang"]
        start = i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i >= len(lines):
            raise ValueError(f"unclosed code fence opened at line {start}")
        if lang == "python" and previous != SKIP:
            body = "\n".join(line[len(indent) :] for line in lines[start:i])
            blocks.append((start + 1, textwrap.dedent(body)))
        previous = "```"
        i += 1
    return blocks


def page_program(page: Path) -> str:
    """The page's blocks as one program whose line numbers match the page."""
    text = page.read_text(encoding="utf-8")
    lines: list[str] = []
    for first, code in python_blocks(text):
        lines += [""] * (first - 1 - len(lines))
        lines += code.splitlines()
    return "\n".join(lines) + "\n"


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


PAGES_WITH_CODE = [page for page in PAGES if page_program(page).strip()]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_id)
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    program = page_program(page)
    if MULTI_DEVICE in page.read_text(encoding="utf-8"):
        script = tmp_path / page.name.replace(".md", ".py")
        script.write_text(program, encoding="utf-8")
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
        env["JAX_PLATFORMS"] = "cpu"
        run = subprocess.run(
            [sys.executable, "-W", "error::rootdiff.ConvergenceWarning", str(script)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, f"{_id(page)} failed:\n{run.stdout}\n{run.stderr}"
        return
    monkeypatch.chdir(tmp_path)  # pages that write files write them here
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # what a reader gets by default
    try:
        exec(compile(program, str(page), "exec"), {"__name__": "__docs__"})
    finally:
        jax.config.update("jax_enable_x64", x64)


def test_blocks_are_found():
    text = "x\n\n```python\na = 1\n```\n<!-- skip -->\n```python\nb = 2\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(4, "a = 1")]


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = "python -m pytest tests rootdiff -q"
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && ' + test_cmd
    ) in readme
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[examples]" && '
        "python examples/hyperparameter_tuning.py"
    ) in readme
    assert re.search(rf"^{re.escape(test_cmd)}$", ci, re.M), ".ci/run must run the README's tests"


def _api_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md"))


def _public(module_name: str) -> list[tuple[str, set[str]]]:
    """``(public name, the paths under which its reference may appear)``."""
    module = pytest.importorskip(module_name)
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        paths = {f"{module_name}.{name}"}
        if getattr(obj, "__module__", None):  # documented where it is defined
            paths.add(f"{obj.__module__}.{name}")
        out.append((f"{module_name}.{name}", paths))
    return out


@pytest.mark.parametrize(
    "module", ["rootdiff", "rootdiff.linear_solve", "rootdiff.projections", "rootdiff.layers"]
)
def test_api_reference_lists_every_public_name(module: str):
    api = _api_text() + "\n"
    missing = [
        name
        for name, paths in _public(module)
        if not any(f"::: {path}\n" in api for path in paths) and not _is_module(name)
    ]
    assert not missing, f"add to docs/api/: {missing}"


def _is_module(name: str) -> bool:
    return type(sys.modules.get(name)) is type(sys)


def test_every_example_is_in_the_gallery():
    gallery = (DOCS / "examples.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "examples").glob("*.py")) if p.name not in gallery]
    assert not missing, f"add to docs/examples.md: {missing}"


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")]
    missing = [p for p in pages if p not in nav]
    assert not missing, f"add to mkdocs.yml nav: {missing}"
