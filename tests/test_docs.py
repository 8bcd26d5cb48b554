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

import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
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
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
        env = dict(os.environ, XLA_FLAGS=flags.strip())
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
    test_cmd = "python -m pytest tests rootdiff -n auto -v"
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && ' + test_cmd
    ) in readme
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[examples]" && '
        "python examples/hyperparameter_tuning.py"
    ) in readme
    assert re.search(rf"^{re.escape(test_cmd)}$", ci, re.M), ".ci/run must run the README's tests"


def test_minimum_versions_are_the_declared_floors():
    """.ci/run's minimum-versions leg pins exactly pyproject.toml's floors."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib: Python 3.11+)
    deps = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.M | re.S)[1]
    floors = dict(re.findall(r'"([\w-]+)>=([\w.]+)"', deps))
    assert floors, "no floors found in pyproject.toml's dependencies"
    pins = (ROOT / ".ci" / "min-versions.txt").read_text(encoding="utf-8")
    pinned = dict(re.findall(r"^([\w-]+)==([\w.]+)$", pins, re.M))
    for name, floor in floors.items():
        assert name in pinned, f".ci/min-versions.txt does not pin {name}"
        # numpy's floor is a minor version (1.25): its pin is that version's latest patch.
        assert pinned[name] == floor or pinned[name].startswith(floor + "."), (name, floor)


def test_quick_subset_names_existing_tests(request: pytest.FixtureRequest):
    """Every entry of the quick subset (tests/conftest.py) still names a test."""
    from conftest import QUICK_MISSING

    missing = request.config.stash.get(QUICK_MISSING, [])
    assert not missing, f"tests/conftest.py QUICK names tests that do not exist: {missing}"


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


# --- The built site, rendered in a headless browser ---------------------------
#
# ``mkdocs build --strict`` builds the site; Chromium (Debian's ``chromium``
# package, driven by Playwright) opens every page from a local server with all
# other network access blocked, as a reader without internet would. Each page
# must typeset every formula with the MathJax the site serves itself, raise no
# JavaScript error and show no code block that needs a horizontal scroll bar;
# the benchmarks page must open with its one-screen summary. Screenshots of a
# few pages are written to ``$ROOTDIFF_SCREENSHOTS`` (default: a temporary folder).
# One test does it all, so that the site is built once even under pytest-xdist.
#
# Without mkdocs, Playwright or Chromium the test skips, naming what is missing
# (``pip install -e ".[docs]"``, ``apt-get install chromium``), except in CI
# (``CI`` set), where a missing tool is a failure: .ci/run installs all three.

SCREENSHOT_PAGES = ["", "math/", "benchmarks/"]
#: Requests a page may make and do without: the theme's star count of the repository.
OPTIONAL_REMOTE = "https://api.github.com/repos/"
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# In the page: formulas found and typeset, MathJax errors, code blocks that
# overflow horizontally, and TeX left raw in the visible text (outside code).
_PAGE_REPORT = """() => {
  const math = [...document.querySelectorAll('.arithmatex')];
  const text = [...document.querySelectorAll('.md-content p, .md-content li, .md-content td')]
    .map(e => e.innerText).join('\\n');
  return {
    formulas: math.length,
    typeset: math.filter(e => e.querySelector('mjx-container')).length,
    errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
    overflowing_code: [...document.querySelectorAll('pre > code')]
      .filter(e => e.scrollWidth > e.clientWidth + 1)
      .map(e => e.innerText.split('\\n').find(l => l.length > 60) || e.innerText.slice(0, 80)),
    raw_tex: (text.match(/\\\\\\(|\\\\\\[|\\$\\$|\\\\frac|\\\\partial/g) || []).length,
  };
}"""
_TYPESET_DONE = """() => window.MathJax && MathJax.startup && MathJax.startup.promise &&
  [...document.querySelectorAll('.arithmatex')].every(e => e.querySelector('mjx-container'))"""
# The first table of a page: its header, size and position.
_FIRST_TABLE = """() => {
  const t = document.querySelector('.md-content table');
  const rect = t.getBoundingClientRect();
  const wrap = t.closest('.md-typeset__scrollwrap') || t;
  return {
    head: t.rows[0].innerText,
    rows: t.rows.length - 1,
    top: rect.top + window.scrollY,
    bottom: rect.bottom + window.scrollY,
    scroll: wrap.scrollWidth > wrap.clientWidth,
    min_col: Math.min(...[...t.rows[0].cells].map(c => c.getBoundingClientRect().width)),
  };
}"""


def _need(what: str, available: bool, how: str) -> None:
    if available:
        return
    message = f"{what} is not available: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (.ci/run must install it)")
    pytest.skip(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no access log in the test output
        pass


def _build_site(out: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-5000:]}"


def _site_pages(site: Path) -> list[str]:
    """URL paths of the site's pages ("" for the home page, "math/", ...)."""
    pages = [p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")]
    pages = [p for p in pages if not p.startswith(("assets", "javascripts"))]
    return sorted("" if p == "." else p + "/" for p in pages)


def _stray_files(site: Path) -> list[str]:
    problems = [f"build helper copied into the site: {p}" for p in site.rglob("*.py")]
    if not (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").is_file():
        problems.append("MathJax is missing from the site")
    for html in site.rglob("*.html"):
        scripts = re.findall(r'<script[^>]+src="([^"]+)"', html.read_text(encoding="utf-8"))
        remote = [s for s in scripts if re.match(r"(https?:)?//", s)]
        if remote:
            problems.append(f"{html.relative_to(site)} loads scripts from the network: {remote}")
    return problems


def _render_pages(context, base: str, pages: list[str], shots: Path) -> tuple[list, dict]:
    """Open every page; problems found, and each page's report."""
    problems, reports = [], {}
    for path in pages:
        name = path or "/"
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.goto(base + path, wait_until="load")
        try:
            page.wait_for_function(_TYPESET_DONE, timeout=30_000)
        except Exception:  # noqa: BLE001 - reported below with the counts
            pass
        r = reports[name] = page.evaluate(_PAGE_REPORT)
        if r["typeset"] != r["formulas"] or r["errors"] or r["raw_tex"]:
            problems.append(f"{name}: formulas not rendered: {r}")
        if r["overflowing_code"]:
            problems.append(f"{name}: code needs horizontal scroll: {r['overflowing_code']}")
        if errors:
            problems.append(f"{name}: JavaScript errors {errors}")
        if path in SCREENSHOT_PAGES:
            shot = shots / f"{path.strip('/') or 'index'}.png"
            page.screenshot(path=str(shot))
            if shot.stat().st_size < 20_000:
                problems.append(f"{name}: blank screenshot? {shot}")
        if path == "benchmarks/":
            problems += _benchmarks_summary(page.evaluate(_FIRST_TABLE))
        page.close()
    return problems, reports


def _benchmarks_summary(first: dict) -> list[str]:
    """The benchmarks page opens with a one-screen summary, one row per workload."""
    ok = (
        "time ratio" in first["head"]
        and first["rows"] <= 20
        and first["bottom"] <= VIEWPORT["height"]  # all on the first screen
        and not first["scroll"]  # no horizontal scroll bar
        and first["min_col"] >= 60  # columns not squeezed
    )
    return [] if ok else [f"benchmarks/: the page does not open with its summary: {first}"]


def test_built_site_renders_offline(tmp_path: Path):
    _need("mkdocs", importlib.util.find_spec("mkdocs") is not None, 'pip install -e ".[docs]"')
    has_playwright = importlib.util.find_spec("playwright") is not None
    _need("playwright", has_playwright, 'pip install -e ".[docs]"')
    chromium = os.environ.get("ROOTDIFF_CHROMIUM") or shutil.which("chromium")
    _need("Chromium", chromium is not None, "apt-get install chromium (or set ROOTDIFF_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    _build_site(site)
    problems = _stray_files(site)
    pages = _site_pages(site)
    shots = Path(os.environ.get("ROOTDIFF_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    blocked: list[str] = []

    def only_local(route):
        url = route.request.url
        if url.startswith(base):
            route.continue_()
            return
        if not url.startswith(OPTIONAL_REMOTE):
            blocked.append(url)
        route.abort()

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport=VIEWPORT)
            context.route("**/*", only_local)
            found, reports = _render_pages(context, base, pages, shots)
            browser.close()
    finally:
        server.shutdown()
    problems += found
    if blocked:
        problems.append(f"pages tried to load from the network: {sorted(set(blocked))[:10]}")
    assert not problems, "\n".join(problems)
    assert len(reports) >= 15, sorted(reports)
    assert reports["math/"]["typeset"] >= 5, reports["math/"]
    assert sum(r["typeset"] for r in reports.values()) >= 20, reports
