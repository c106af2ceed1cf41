"""Text escaping for Mermaid and DOT, and identifier safety rules.

Every label goes through :func:`normalise` first, so both outputs see the same text:

- line breaks of any kind (``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``,
  ``\\x85``, ``\\u2028``, ``\\u2029``) become ``\\n``;
- other control characters (``\\t`` excepted) and lone surrogates become U+FFFD, since
  neither format can carry them (Graphviz stops at NUL, and a surrogate cannot be encoded
  as UTF-8).

Mermaid is then escaped with its own ``#name;`` entity codes, because a backslash does not
escape anything inside a Mermaid string: ``A["say \\"hi\\""]`` is read as ``say \\hi\\``.
DOT uses ordinary C-style escapes inside a double-quoted string.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = [
    "MERMAID_BREAK",
    "dot_id",
    "dot_text",
    "is_reserved",
    "mermaid_text",
    "normalise",
    "protect_mermaid_line",
]

MERMAID_BREAK: Final = "<br/>"
"""How a Mermaid label breaks a line (Mermaid renders labels as HTML)."""

# Characters that would end the string or be read as HTML/Markdown/entity syntax.
_MERMAID_ENTITIES: Final = {
    '"': "#quot;",  # ends the string
    "#": "#35;",  # starts an entity code (#name;)
    "&": "#amp;",  # HTML entity in the rendered label
    "<": "#lt;",  # HTML tag in the rendered label
    ">": "#gt;",
    "`": "#96;",  # "`...`" inside a string is a Markdown string
}

# Mermaid pre-processes the whole text with this pattern (a leftover from its style
# syntax) and drops the last ";" of every match, which would break an entity code that
# follows a ":" on a line that mentions "style" or "classDef".
_MERMAID_STYLE_PASS: Final = re.compile(r"(?:style|classDef).*:\S*#.*;")

# Words that Mermaid's flowchart lexer reads as keywords where a node id is expected
# (case-sensitive; checked against mermaid 11 with its own parser).
_MERMAID_RESERVED: Final = frozenset(
    {
        "_blank",
        "_parent",
        "_self",
        "_top",
        "call",
        "class",
        "classDef",
        "click",
        "end",
        "flowchart",
        "graph",
        "href",
        "interpolate",
        "linkStyle",
        "style",
        "subgraph",
    }
)

# DOT keywords (case-insensitive) cannot be bare identifiers.
_DOT_KEYWORDS: Final = frozenset({"digraph", "edge", "graph", "node", "strict", "subgraph"})

_LINE_BREAKS: Final = re.compile(r"\r\n|[\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def normalise(text: str) -> str:
    """Unify line breaks and replace characters neither format can carry.

    Args:
        text: Raw label text (a node name, a playbook label).

    Returns:
        The text with every line break as ``\\n`` and every other control character
        (except ``\\t``) or lone surrogate replaced by U+FFFD.
    """
    text = _LINE_BREAKS.sub("\n", text)
    if text.isprintable():
        return text
    return "".join(
        "\ufffd" if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cs") else ch
        for ch in text
    )


def mermaid_text(text: str) -> str:
    """Escape text for use inside a double-quoted Mermaid label.

    Args:
        text: Raw label text.

    Returns:
        The text with ``" # & < > `` ` written as Mermaid entity codes and line breaks
        as ``<br/>``; everything else (unicode included) is kept as is.
    """
    text = normalise(text)
    out: list[str] = []
    for ch in text:
        if ch in _MERMAID_ENTITIES:
            out.append(_MERMAID_ENTITIES[ch])
        elif ch == "\n":
            out.append(MERMAID_BREAK)
        else:
            out.append(ch)
    return "".join(out)


def protect_mermaid_line(line: str) -> str:
    """Keep Mermaid's style pre-pass from eating the ``;`` of an entity code.

    Args:
        line: One complete Mermaid node line.

    Returns:
        The line unchanged, or, when Mermaid's pre-pass would alter it, with every ``:``
        written as ``#58;`` (only labels can contain ``:``).
    """
    if _MERMAID_STYLE_PASS.search(line) is None:
        return line
    return line.replace(":", "#58;")


def dot_text(text: str) -> str:
    """Escape text for use inside a double-quoted DOT string.

    Args:
        text: Raw label text.

    Returns:
        The text with ``\\`` and ``"`` backslash-escaped, line breaks as ``\\n`` and
        ``&`` as ``&amp;``. Escaping the backslash disables Graphviz's label macros
        (``\\N``, ``\\G``, ``\\l``, ...), and escaping ``&`` its HTML entities
        (``&amp;``, ``&#35;``, ...), so a name is always shown literally.
    """
    text = normalise(text).replace("&", "&amp;")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def is_reserved(ident: str) -> bool:
    """Whether an identifier is a keyword in Mermaid or in DOT.

    Args:
        ident: A candidate identifier (``[0-9A-Za-z_]+``).

    Returns:
        True for Mermaid flowchart keywords (case-sensitive) and DOT keywords
        (case-insensitive); such identifiers get a collision suffix instead.
    """
    return ident in _MERMAID_RESERVED or ident.lower() in _DOT_KEYWORDS


def dot_id(ident: str) -> str:
    """Write an identifier as a DOT ID.

    Args:
        ident: An identifier of the graph model (``[0-9A-Za-z_]+``, never a keyword).

    Returns:
        The identifier itself, or quoted when it starts with a digit (a bare DOT ID may
        not, and Graphviz would split ``1st`` into ``1`` and ``st``).
    """
    return f'"{ident}"' if ident[:1].isdigit() else ident
