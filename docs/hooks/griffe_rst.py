r"""A griffe extension that lets mkdocstrings render fastoptim's docstrings.

The docstrings follow the Google layout (``Args:``, ``Returns:``) but write maths and
cross-references in reStructuredText, as Sphinx and optax do: ``:math:`\gamma```,
``.. math::`` blocks and roles such as ``:class:`~fastoptim.Adam```. mkdocstrings reads them as
Markdown, which would print the roles literally. Before rendering, this extension rewrites

* ``:math:`x``` as inline maths ``$x$`` and ``.. math::`` blocks as display maths, both left to
  ``pymdownx.arithmatex``; a block with ``&`` or ``\\`` is wrapped in ``aligned``, as Sphinx does;
* ``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:exc:``, ``:data:``, ``:obj:`` roles
  as inline code (``~`` keeps only the last component); a target in ``fastoptim`` becomes an
  optional cross-reference, a link where the site documents the target and plain code elsewhere;
* a paragraph ending in ``::`` (an RST literal block follows) as one ending in ``:``;
* an ``Args:`` entry naming several parameters (``kahan_sum, backend: As for ...``) as one entry
  per parameter, so that each gets its row, type and default in the parameter table.

The docstrings in ``src/`` stay as they are; only the text handed to the renderer changes.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj):`(~?)([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*$")
_ARGS_HEADER = re.compile(r"^(?P<indent>\s*)(?:Args|Arguments|Parameters|Keyword Args):\s*$")
_SHARED_ENTRY = re.compile(r"^(?P<indent>\s*)(?P<names>\w+(?:,\s*\w+)+):(?P<rest>.*)$")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_shared_entries(lines: list[str]) -> list[str]:
    """Repeats an ``Args:`` entry that names several parameters once for each of them."""
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _ARGS_HEADER.match(line)
        if header is not None:
            section_indent = len(header.group("indent"))
        elif line.strip() and section_indent is not None and _indent_of(line) <= section_indent:
            section_indent = None
        entry = _SHARED_ENTRY.match(line) if section_indent is not None else None
        if entry is None:
            out.append(line)
            i += 1
            continue
        i += 1
        continuation = []
        while i < len(lines) and lines[i].strip() and _indent_of(lines[i]) > len(entry.group("indent")):
            continuation.append(lines[i])
            i += 1
        for name in entry.group("names").split(","):
            out.append(f"{entry.group('indent')}{name.strip()}:{entry.group('rest')}")
            out.extend(continuation)
    return out


def _xref(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    title = target
    if "<" in target and target.endswith(">"):  # :class:`title <target>`
        title, target = target[:-1].split("<", 1)
        title = title.strip()
    elif tilde:
        title = target.rsplit(".", 1)[-1]
    if target == "fastoptim" or target.startswith("fastoptim."):
        return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'
    return f"`{title}`"


def _math_block(lines: list[str], indent: str) -> list[str]:
    """Returns the display-maths Markdown for the body of a ``.. math::`` directive."""
    body = [line.strip() for line in lines if line.strip()]  # a blank line would end the block
    text = "\n".join(indent + line for line in body)
    if any("&" in line or line.endswith("\\\\") for line in body):
        return [
            f"{indent}$$",
            f"{indent}\\begin{{aligned}}",
            text,
            f"{indent}\\end{{aligned}}",
            f"{indent}$$",
        ]
    return [f"{indent}$$", text, f"{indent}$$"]


def rst_to_markdown(text: str) -> str:
    """Rewrites the reStructuredText maths and roles of a docstring as Markdown.

    Args:
        text: The raw docstring.

    Returns:
        The docstring with ``$...$`` maths, inline-code cross-references and no ``::`` markers.
    """
    lines = _split_shared_entries(text.splitlines())
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group("indent")
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > len(indent)):
            block.append(lines[i])
            i += 1
        out.extend(_math_block(block, indent))
        if i < len(lines):
            out.append("")
    converted = "\n".join(out)
    converted = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", converted)
    converted = _XREF_ROLE.sub(_xref, converted)
    return re.sub(r"(?<=\S)::$", ":", converted, flags=re.MULTILINE)


class ReStructuredTextMaths(Extension):
    """Rewrites every docstring's reStructuredText maths and roles before rendering."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        """Converts ``obj``'s docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
