"""``--config models.yaml``: several models in one server.

The file holds a ``models:`` list. Each entry sets :class:`~embedserve.settings.ModelSettings` fields by name
(``name`` is short for ``served_model_name``); fields an entry leaves out come from the command line and environment,
so ``embedserve --device cuda --config models.yaml`` puts every model on the GPU. Every value is type-checked here,
with errors that name the entry and the key.
"""

from __future__ import annotations

import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from embedserve.options import SettingsError, unwrap_optional
from embedserve.settings import ModelSettings

ALIASES = {"name": "served_model_name"}


def load_models(path: str, defaults: ModelSettings) -> tuple[ModelSettings, ...]:
    """The models of a config file, each starting from ``defaults``."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"--config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"--config {path} is not valid YAML: {exc}") from exc
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"--config {path}: expected a `models:` list with at least one entry")
    hints = typing.get_type_hints(ModelSettings)
    known = {f.name for f in fields(ModelSettings)}
    models = []
    for i, entry in enumerate(entries):
        where = f"--config {path}: models[{i}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where} must be a mapping of settings")
        values: dict[str, Any] = {}
        for key, value in entry.items():
            name = ALIASES.get(str(key), str(key))
            if name not in known:
                raise SettingsError(f"{where} has an unknown key {key!r}; known keys: name, {', '.join(sorted(known))}")
            values[name] = checked(value, hints[name], f"{where}.{key}")
        if "model_id" not in values:
            raise SettingsError(f"{where} needs a model_id (a hub id or a local directory)")
        models.append(replace(defaults, **values))
    return tuple(models)


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
