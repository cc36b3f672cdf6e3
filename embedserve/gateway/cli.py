"""``embedserve gateway --fleet fleet.yaml``: run the fleet's gateway (see :mod:`embedserve.gateway.app`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from embedserve.options import SettingsError


def build_parser() -> argparse.ArgumentParser:
    """The gateway's few flags: everything else is in the fleet file's ``gateway:`` section."""
    parser = argparse.ArgumentParser(
        prog="embedserve gateway",
        description="Route requests by model to the fleet's workers; keys, rate limits, CORS and logs at the edge.",
    )
    parser.add_argument("--fleet", metavar="FILE", help="The fleet file (YAML). [env: EMBEDSERVE_FLEET]")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.add_argument("--json-output", action="store_true", help="One JSON object per log line.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Load the fleet file and serve the gateway until SIGTERM/SIGINT. Returns the exit status."""
    args = build_parser().parse_args(argv)
    path = args.fleet or os.environ.get("EMBEDSERVE_FLEET")
    if not path:
        sys.stderr.write("embedserve gateway: error: give the fleet file with --fleet or EMBEDSERVE_FLEET\n")
        return 2

    import uvicorn

    from embedserve import logs
    from embedserve.fleet import load_fleet
    from embedserve.gateway.app import create_gateway

    try:
        fleet = load_fleet(path)
        app = create_gateway(fleet)
    except SettingsError as exc:
        sys.stderr.write(f"embedserve gateway: error: {exc}\n")
        return 2
    logs.configure(json_output=args.json_output, level=args.log_level)
    config = uvicorn.Config(app, host=fleet.gateway.hostname, port=fleet.gateway.port, log_config=None,
                            access_log=False, timeout_keep_alive=5, timeout_graceful_shutdown=30)  # fmt: skip
    uvicorn.Server(config).run()
    return 0
