"""Griffe extension: render the reST idioms of rootdiff's docstrings in Markdown.

rootdiff's docstrings are Google style, written to read well in ``help()`` and to
run as doctests; a few reST idioms in them would render verbatim in Markdown:

* ``Example:`` (singular) is not a Google section for griffe: it becomes an
  "Examples" section, so that ``>>>`` lines render as code, not as quotes;
* ``.. math::`` blocks become ``$$ … $$`` display maths (pymdownx.arithmatex);
* ``:func:`~a.b.name``` / ``:class:`…``` / ``:mod:`…``` / ``:data:`…``` /
  ``:attr:`…``` roles become inline code.

The docstrings themselves are left untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)
_ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|obj|exc):`~?([^`]+)`")
_MATH = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def _short(match: re.Match[str]) -> str:
    target = match.group(1)
    return f"`{target.rsplit('.', 1)[-1]}`" if match.group(0).count("~") else f"`{target}`"


def _math_blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = _MATH.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body = [m["first"].strip()] if m["first"].strip() else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            if lines[i].strip():
                body.append(lines[i].strip())
            elif (
                body
                and i + 1 < len(lines)
                and lines[i + 1].strip()
                and (len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= len(indent))
            ):
                break
            i += 1
        out += ["", f"{indent}$$", *(f"{indent}{line}" for line in body), f"{indent}$$", ""]
    return "\n".join(out)


def rewrite(text: str) -> str:
    """The Markdown-friendly version of a docstring."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(_short, text)
    return _math_blocks(text)


class ReSTToMarkdown(griffe.Extension):
    """Rewrite each docstring before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
