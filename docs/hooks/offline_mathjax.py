"""MkDocs hook: serve MathJax from the site itself, so formulas render offline.

The MathJax files come from a Python package (``django-static-mathjax``, in the
``docs`` extra), installed from the package index at build time; the hook adds
them to the site under ``javascripts/mathjax/``. Readers' browsers then load
nothing from a CDN: a site built from a checkout renders its formulas without
internet access.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

#: Where the MathJax files land in the site (mkdocs.yml's extra_javascript points here).
DEST = "javascripts/mathjax"
#: The one combined MathJax component the site loads; the other components
#: (TeX extensions, fonts, menu, accessibility) are loaded by it on demand.
ENTRY = "tex-mml-chtml.js"


def mathjax_root() -> Path:
    """The ``es5`` folder of the installed MathJax distribution."""
    try:
        import mathjax  # django-static-mathjax: MathJax's own files, no Python code
    except ImportError as e:
        raise PluginError(
            "MathJax is not installed: install the docs extra (pip install -e '.[docs]')"
        ) from e
    root = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (root / ENTRY).is_file():
        raise PluginError(f"MathJax's {ENTRY} not found under {root}")
    return root


def on_files(files: Files, config, **kwargs) -> Files:
    root = mathjax_root()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.parent == root and path.name != ENTRY:
            continue  # the other combined components are alternatives to ENTRY
        uri = f"{DEST}/{path.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
