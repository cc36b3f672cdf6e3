"""Writing Terraform (HCL 2 native syntax) from Python values, deterministically.

A file is a list of :class:`Block` and :class:`Comment`; a block's body holds attributes (a name and a value), nested
blocks and comments, in the order given. Values are Python ``str``, ``bool``, ``int``, ``float``, ``None``, lists and
dicts; a :class:`Raw` is an HCL expression written as is (a reference such as ``var.region``). Strings are escaped so
that nothing in them is read as an interpolation (``${`` and ``%{``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
INDENT = "  "


@dataclass(frozen=True)
class Raw:
    """An HCL expression, written without quoting: ``Raw("var.region")``."""

    expression: str


@dataclass(frozen=True)
class Comment:
    """A ``#`` comment line (checkov reads its ``#checkov:skip=ID:reason`` form inside a resource)."""

    text: str


@dataclass(frozen=True)
class Block:
    """``type "label" ... { body }``; ``body`` items are ``(name, value)`` attributes, blocks or comments."""

    type: str
    labels: tuple[str, ...] = ()
    body: Sequence[tuple[str, Any] | Block | Comment] = field(default_factory=list)


def string(text: str) -> str:
    """A quoted HCL string literal holding exactly ``text``."""
    quoted = json.dumps(text, ensure_ascii=False)  # HCL's escapes for quotes, backslashes and controls are JSON's
    return quoted.replace("${", "$${").replace("%{", "%%{")


def value(item: Any, depth: int = 0) -> str:
    """An HCL expression for a Python value."""
    if isinstance(item, Raw):
        return item.expression
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, Mapping):
        if not item:
            return "{}"
        inner = INDENT * (depth + 1)
        lines = [f"{inner}{_key(str(k))} = {value(v, depth + 1)}" for k, v in item.items()]
        return "{\n" + "\n".join(lines) + "\n" + INDENT * depth + "}"
    if isinstance(item, list | tuple):
        parts = [value(v, depth + 1) for v in item]
        flat = "[" + ", ".join(parts) + "]"
        if len(flat) <= 100 and "\n" not in flat:
            return flat
        inner = INDENT * (depth + 1)
        return "[\n" + "".join(f"{inner}{p},\n" for p in parts) + INDENT * depth + "]"
    raise TypeError(f"no HCL form for {type(item).__name__}")


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else string(name)


def block(item: Block, depth: int = 0) -> str:
    """One block and everything in it."""
    pad = INDENT * depth
    head = " ".join([item.type, *(string(label) for label in item.labels)])
    lines = [f"{pad}{head} {{"]
    for entry in item.body:
        if isinstance(entry, Block):
            lines.append(block(entry, depth + 1))
        elif isinstance(entry, Comment):
            lines.append(f"{pad}{INDENT}# {entry.text}")
        else:
            name, content = entry
            lines.append(f"{pad}{INDENT}{name} = {value(content, depth + 1)}")
    lines.append(f"{pad}}}")
    return "\n".join(lines)


def document(items: Sequence[Block | Comment]) -> str:
    """A ``.tf`` file: top-level blocks separated by blank lines."""
    out: list[str] = []
    for item in items:
        if isinstance(item, Comment):
            out.append(f"# {item.text}\n")
        else:
            out.append(block(item) + "\n\n")
    return "".join(out).rstrip("\n") + "\n"
