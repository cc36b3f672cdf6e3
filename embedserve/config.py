"""``--config models.yaml``: several models in one server.

The file holds a ``models:`` list. Each entry sets :class:`~embedserve.settings.ModelSettings` fields by name
(``name`` is short for ``served_model_name``); fields an entry leaves out come from the command line and environment,
so ``embedserve --device cuda --config models.yaml`` puts every model on the GPU. Every value is type-checked here,
with errors that name the entry and the key.
"""

from __future__ import annotations

import typing
from collections.abc import Set as AbstractSet
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from embedserve.options import SettingsError, unwrap_optional
from embedserve.settings import ModelSettings

ALIASES = {"name": "served_model_name"}


def load_models(path: str, defaults: ModelSettings) -> tuple[ModelSettings, ...]:
    """The models of a config file, each starting from ``defaults``."""
    data = read_yaml(path, f"--config {path}")
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"--config {path}: expected a `models:` list with at least one entry")
    models = []
    for i, entry in enumerate(entries):
        values, _ = model_entry(entry, f"--config {path}: models[{i}]")
        models.append(replace(defaults, **values))
    return tuple(models)


def read_yaml(path: str | Path, where: str) -> Any:
    """A YAML file's content; SettingsError starting with ``where`` when it cannot be read or parsed."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{where}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where} is not valid YAML: {exc}") from exc


def model_entry(entry: Any, where: str, own: AbstractSet[str] = frozenset()) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model entry of a config or fleet file: its :class:`ModelSettings` fields by name (``name`` for
    ``served_model_name``), each value checked, and apart the keys in ``own`` (the file's own, unchecked here; one
    shadows a setting of the same name). Unknown keys and a missing ``model_id`` are errors naming ``where``."""
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} must be a mapping of settings")
    hints = typing.get_type_hints(ModelSettings)
    known = {f.name for f in fields(ModelSettings)} - set(own)
    values: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in entry.items():
        if str(key) in own:
            extras[str(key)] = value
            continue
        name = ALIASES.get(str(key), str(key))
        if name not in known:
            choices = ", ".join(sorted({*ALIASES, *own, *known}))
            raise SettingsError(f"{where} has an unknown key {key!r}; known keys: {choices}")
        values[name] = checked(value, hints[name], f"{where}.{key}")
    if "model_id" not in values:
        raise SettingsError(f"{where} needs a model_id (a hub id or a local directory)")
    return values, extras


def checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits ``hint`` (str, int, float, bool, Literal, dict[str, str], optional), else an error."""
    hint, nullable = unwrap_optional(hint)
    if value is None and nullable:
        return None
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value in args:
            return value
        raise SettingsError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        raise SettingsError(f"{where} must map names to strings")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise SettingsError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}")
