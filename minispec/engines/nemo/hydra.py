"""Hydra command-line overrides for the NeMo 1 (legacy) scripts, with values quoted for Hydra.

Shell quoting (:func:`minispec.engines.nemo.launch.join`) keeps an argument in one piece; Hydra
then parses ``key=value`` with its own grammar, where ``,`` ``[`` ``{`` ``=`` ``'`` and spaces
mean something and ``${...}`` is an OmegaConf interpolation. A path from the spec is therefore
quoted again for Hydra, so that Hydra reads back exactly the string we meant.
"""

from __future__ import annotations

import re

# Characters Hydra accepts in an unquoted value without giving them a meaning.
_PLAIN = re.compile(r"^[A-Za-z0-9_./+\-]+$")


def value(text: str) -> str:
    """``text`` as a Hydra value: as is when plain, else single-quoted with Hydra's escapes."""
    if _PLAIN.match(text):
        return text
    text = text.replace("${", "\\${")  # OmegaConf would resolve an interpolation
    out: list[str] = []
    pending = 0  # backslashes seen but not yet written
    for char in text + "\0":
        if char == "\\":
            pending += 1
            continue
        # Hydra unescapes backslashes only before a quote or at the end of the string
        ends = char in ("'", "\0")
        out.append("\\" * (pending * 2 if ends else pending))
        pending = 0
        if char == "'":
            out.append("\\'")
        elif char != "\0":
            out.append(char)
    return "'" + "".join(out) + "'"


def scalar(obj: object) -> str:
    """A number, bool or path as a Hydra value (bools as Hydra spells them)."""
    if isinstance(obj, bool):
        return "True" if obj else "False"
    if isinstance(obj, (int, float)):
        return repr(obj)
    return value(str(obj))


def override(key: str, obj: object, prefix: str = "") -> str:
    """``key=value``; ``prefix`` is ``+`` (add a key), ``++`` (add or set) or ``~`` (delete)."""
    if prefix == "~":
        return f"~{key}"
    return f"{prefix}{key}={scalar(obj)}"


def mapping(items: dict[str, object]) -> str:
    """A Hydra dict literal ``{a: x, b: [1.0, y]}`` with every leaf quoted as needed."""
    return "{" + ", ".join(f"{key}: {_element(item)}" for key, item in items.items()) + "}"


def _element(obj: object) -> str:
    if isinstance(obj, dict):
        return mapping(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(_element(item) for item in obj) + "]"
    return scalar(obj)
