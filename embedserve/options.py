"""How a settings field becomes a command-line flag and environment variables: its metadata, names and docs.

:mod:`embedserve.settings` declares every field with :func:`opt`; :mod:`embedserve.cli` and :mod:`embedserve.config`
read the fields back through these helpers, and the README's flag table comes from :func:`field_docs`.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any


class SettingsError(ValueError):
    """A setting, or a combination of settings, that cannot work. The message names the flag to change."""


def opt(help_text: str, *, tei_env: bool = True, metavar: str | None = None, cli: bool = True) -> dict[str, Any]:
    """Field metadata: the help text and whether the bare TEI-style env var (``MAX_BATCH_TOKENS``) is honoured.

    ``EMBEDSERVE_<NAME>`` is always honoured and wins over the bare name. ``cli=False`` fields are set only from a
    ``--config`` file (they are not scalars a flag could carry).
    """
    return {"help": help_text, "tei_env": tei_env, "metavar": metavar, "cli": cli}


def env_names(name: str, metadata: Any) -> list[str]:
    """The environment variables a field is read from, strongest first."""
    names = [f"EMBEDSERVE_{name.upper()}"]
    if metadata.get("tei_env", True):
        names.append(name.upper())
    return names


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """A field's type without ``| None``, and whether None is allowed (for the CLI and the config file)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def flag_name(name: str) -> str:
    """``max_batch_tokens`` -> ``--max-batch-tokens``."""
    return "--" + name.replace("_", "-")


def positive(name: str, value: int) -> None:
    """Reject a count below 1, naming its flag."""
    if value < 1:
        raise SettingsError(f"{flag_name(name)} must be at least 1, got {value}")


def field_docs(cls: type[Any]) -> list[tuple[str, str, list[str], Any]]:
    """(flag, help, env vars, default) for every field of a settings class; the README flag table is built from it."""
    rows = []
    for f in fields(cls):
        if f.metadata.get("cli", True):
            rows.append((flag_name(f.name), f.metadata["help"], env_names(f.name, f.metadata), f.default))
    return rows
