"""The ``embedserve`` command: flags generated from the settings dataclasses, then uvicorn.

Every settings field becomes ``--field-name``; its value comes from the flag, else ``EMBEDSERVE_FIELD_NAME``, else
the bare TEI-style ``FIELD_NAME`` (where the field allows it), else the default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, replace
from typing import Any

from embedserve import __version__
from embedserve.config import load_models
from embedserve.options import SettingsError, env_names, flag_name, unwrap_optional
from embedserve.settings import CacheSettings, EdgeSettings, ModelSettings, ServerSettings, Settings

log = logging.getLogger("embedserve.cli")

GROUPS: tuple[tuple[str, type[Any]], ...] = (
    ("model", ModelSettings),
    ("server", ServerSettings),
    ("edge", EdgeSettings),
    ("cache", CacheSettings),
)
REPEATABLE = {"model_id", "served_model_name"}
"""Model flags that may be given once per model."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _field_kind(hint: Any) -> tuple[Callable[[str], Any], tuple[str, ...] | None, str]:
    """(converter, choices, kind) for a field's type hint, kind being scalar, bool or list; ``X | None`` is X."""
    hint, _ = unwrap_optional(hint)
    if hint is bool:
        return _parse_bool, None, "bool"
    if typing.get_origin(hint) is tuple:
        return _parse_list, None, "list"
    if typing.get_origin(hint) is typing.Literal:
        choices = tuple(str(c) for c in typing.get_args(hint))
        return str, choices, "scalar"
    if hint in (int, float):
        return hint, None, "scalar"
    return str, None, "scalar"


def _settings_fields(cls: type[Any]) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f) for f in fields(cls)]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one flag per settings field."""
    parser = argparse.ArgumentParser(
        prog="embedserve",
        description="Serve embedding models over HTTP with dynamic batching (TEI and OpenAI compatible APIs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"embedserve {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with a `models:` list to serve several models (see the README); the model flags below are "
        "then the defaults of every entry. Exclusive with --model-id. [env: EMBEDSERVE_CONFIG]",
    )
    for title, cls in GROUPS:
        group = parser.add_argument_group(title)
        for name, hint, f in _settings_fields(cls):
            if not f.metadata.get("cli", True):
                continue
            convert, choices, kind = _field_kind(hint)
            if name in REPEATABLE:
                kind = "repeat"
            envs = ", ".join(env_names(name, f.metadata))
            default = f.default if f.default is not MISSING else None
            text = f"{f.metadata['help']} [env: {envs}] [default: {_show(default)}]"
            if kind == "bool":
                group.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, help=text)
            elif kind in ("list", "repeat"):
                group.add_argument(
                    flag_name(name), type=convert, action="append", help=text, metavar=f.metadata.get("metavar")
                )
            else:
                group.add_argument(
                    flag_name(name), type=convert, choices=choices, help=text, metavar=f.metadata.get("metavar")
                )
    # Defaults are shown in the help text itself; the formatter would otherwise print "==SUPPRESS==".
    parser.formatter_class = argparse.HelpFormatter
    return parser


def _show(value: Any) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from flags over environment over defaults. Raises SettingsError naming the bad flag or variable."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[type[Any], dict[str, Any]] = {cls: {} for _, cls in GROUPS}
    for cls, chosen in values.items():
        for name, hint, f in _settings_fields(cls):
            if not f.metadata.get("cli", True):
                continue
            if name in args:
                given = args[name]
                if name in REPEATABLE:
                    chosen[name] = given  # one value per model: --model-id a --model-id b
                elif isinstance(given, list):
                    # A repeated list flag arrives as one tuple per use: --api-key a --api-key b,c -> (a, b, c).
                    chosen[name] = tuple(item for part in given for item in part)
                else:
                    chosen[name] = given
                continue
            convert, choices, _ = _field_kind(hint)
            for env in env_names(name, f.metadata):
                raw = environ.get(env)
                if raw is None or raw == "":
                    continue
                try:
                    value = convert(raw)
                except ValueError as exc:
                    raise SettingsError(f"environment variable {env}={raw!r}: {exc}") from None
                if choices is not None and value not in choices:
                    raise SettingsError(f"environment variable {env}={raw!r} is not one of {', '.join(choices)}")
                chosen[name] = value
                break
    config = args.get("config") or environ.get("EMBEDSERVE_CONFIG") or None
    return Settings(
        server=ServerSettings(**values[ServerSettings]),
        edge=EdgeSettings(**values[EdgeSettings]),
        cache=CacheSettings(**values[CacheSettings]),
        models=_models(values[ModelSettings], from_flags="model_id" in args, config=config),
    )


def _models(values: dict[str, Any], *, from_flags: bool, config: str | None) -> tuple[ModelSettings, ...]:
    """One model per --model-id (names paired by position), or the entries of --config over the model flags."""
    ids = _as_list(values.pop("model_id", None))
    names = _as_list(values.pop("served_model_name", None))
    base = ModelSettings(**values)
    if config is not None:
        if from_flags:
            raise SettingsError("--config and --model-id are exclusive: list the models in the config file")
        if names:
            raise SettingsError("--served-model-name does not apply with --config: give each entry a `name`")
        return load_models(config, base)
    if len(names) > max(1, len(ids)) or (len(ids) > 1 and names and len(names) != len(ids)):
        raise SettingsError("give one --served-model-name per --model-id, in the same order, or none")
    ids = ids or [base.model_id]
    return tuple(
        replace(base, model_id=model_id, served_model_name=names[i] if names else None)
        for i, model_id in enumerate(ids)
    )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# The server command's exit statuses, as the README's table lists them. SIGKILL (or the OOM killer) shows as 137.
EXIT_STOPPED = 0
"""Stopped cleanly: SIGTERM or SIGINT (Ctrl-C), after draining admitted requests (a second signal stops at once)."""
EXIT_LOAD_FAILED = 1
"""A model could not be loaded (the log names it and why)."""
EXIT_BAD_SETTINGS = 2
"""Bad flags, environment variables or config file (the message names the setting to change)."""
EXIT_CANNOT_LISTEN = 3
"""The port is in use, below 1024 without root, or the address is not on this machine; nothing was loaded."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check, listen, serve until SIGTERM/SIGINT. Returns the exit status (the ``EXIT_*`` constants)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["gateway"]:
        from embedserve.gateway.cli import main as gateway_main

        return gateway_main(args[1:])
    if args[:1] == ["deploy"]:
        from embedserve.deploy import main as deploy_main

        return deploy_main(args[1:])
    try:
        settings = parse_settings(argv, os.environ)
        settings.check()
    except SettingsError as exc:
        sys.stderr.write(f"embedserve: error: {exc}\n")
        return EXIT_BAD_SETTINGS

    from embedserve.http.server import ListenError, check_free, listen  # here so that --help and flag errors stay fast

    # The port first: a port in use must stop the command now, not after the models have loaded.
    try:
        sock = listen(settings.server)
    except ListenError as exc:
        sys.stderr.write(f"embedserve: error: {exc}\n")
        return EXIT_CANNOT_LISTEN
    with sock:
        try:
            if settings.edge.prometheus_port is not None:
                check_free(settings.server.hostname, settings.edge.prometheus_port, "--prometheus-port")
        except ListenError as exc:
            sys.stderr.write(f"embedserve: error: {exc}\n")
            return EXIT_CANNOT_LISTEN
        return _serve(settings, sock)


def _serve(settings: Settings, sock: socket.socket) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT (draining first) or a failed model load."""
    import uvicorn

    from embedserve import logs
    from embedserve.http.app import create_app, drain
    from embedserve.http.server import uvicorn_config

    logs.configure(
        json_output=settings.server.json_output,
        level=settings.server.log_level,
        access_log_polls=settings.server.access_log_polls,
    )
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    def on_load_error(exc: BaseException) -> None:
        failures.append(exc)
        stop()

    class Server(uvicorn.Server):
        draining = False

        def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
            # The first SIGTERM/SIGINT drains (health 503, new requests 503, admitted ones finish), then stops;
            # a second one stops at once.
            if self.started and not self.draining:
                self.draining = True
                loop = asyncio.get_running_loop()  # signal handlers run on the main thread, inside the loop
                loop.call_soon(lambda: loop.create_task(drain(app, stop)))
                return
            super().handle_exit(sig, frame)
            # uvicorn re-raises the captured signal after a clean shutdown, which would make a graceful stop exit
            # 143/130; a stop that drained properly exits 0.
            getattr(self, "_captured_signals", []).clear()

    app = create_app(settings, on_load_error=on_load_error)
    config = uvicorn_config(app, settings, timeout_graceful_shutdown=int(settings.edge.graceful_shutdown_timeout) + 1)
    server = Server(config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d (Ctrl-C stops); the models load now, /health answers 200 once they are ready",
             shown, port)  # fmt: skip
    server.run(sockets=[sock])
    return EXIT_LOAD_FAILED if failures else EXIT_STOPPED
