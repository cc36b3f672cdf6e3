"""``embedserve deploy compose|kubernetes|cloudrun --fleet fleet.yaml --out DIR``: deployment files from a fleet file.

The same fleet file the gateway routes by becomes a Compose project (:mod:`.compose`), Kubernetes manifests
(:mod:`.kubernetes`, autoscaling in :mod:`.autoscaling`), with Prometheus and Grafana (:mod:`.monitoring`), or
Terraform for Google Cloud Run (:mod:`.cloudrun`, written by :mod:`.hcl`). The
output is deterministic: the same fleet file gives byte-identical files, so they can be committed and diffed. This
package imports neither torch, the engines nor the HTTP app.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from embedserve.deploy import cloudrun, compose, kubernetes
from embedserve.deploy.common import Options, header
from embedserve.fleet import load_fleet
from embedserve.options import SettingsError

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "embedserve.json"
"""The repository's Grafana dashboard (not part of the installed package: pass --dashboard from elsewhere)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``embedserve deploy`` arguments."""
    parser = argparse.ArgumentParser(
        prog="embedserve deploy",
        description="Write Compose, Kubernetes or Cloud Run (Terraform) files for a fleet file (the same file "
        "`embedserve gateway` reads).",
    )
    parser.add_argument("target", choices=("compose", "kubernetes", "cloudrun"), help="what to generate")
    parser.add_argument("--fleet", required=True, metavar="FILE", help="the fleet file (see the README)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    parser.add_argument("--image-cpu", default=Options.image_cpu, help="image of the gateway and of CPU workers")
    parser.add_argument("--image-cuda", default=Options.image_cuda, help="image of `device: gpu` workers")
    parser.add_argument(
        "--graceful-shutdown-timeout",
        type=float,
        default=Options.graceful_shutdown_timeout,
        metavar="SECONDS",
        help="the workers' drain; the termination grace period is set above it",
    )
    parser.add_argument(
        "--prometheus-url",
        default=Options.prometheus_url,
        help="Prometheus as KEDA reaches it (kubernetes only)",
    )
    parser.add_argument("--dashboard", default=str(DASHBOARD), metavar="FILE", help="Grafana dashboard (compose)")
    return parser


def generate(target: str, fleet_path: Path, options: Options, dashboard: str = "") -> dict[str, str]:
    """Every file for ``target``, by path under the output folder; YAML and Terraform files start with a
    generated-by header."""
    fleet = load_fleet(fleet_path)
    if target == "compose":
        files = compose.generate(fleet_path, fleet, options, dashboard)
    elif target == "cloudrun":
        files = cloudrun.generate(fleet_path, fleet, options)
    else:
        files = kubernetes.generate(fleet_path, fleet, options)
    return {
        path: header(options) + text if path.endswith((".yaml", ".yml", ".tf")) else text
        for path, text in sorted(files.items())
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``embedserve deploy``; returns the exit status."""
    args = build_parser().parse_args(argv)
    fleet_path = Path(args.fleet)
    options = Options(
        source_name=fleet_path.name,
        image_cpu=args.image_cpu,
        image_cuda=args.image_cuda,
        graceful_shutdown_timeout=args.graceful_shutdown_timeout,
        prometheus_url=args.prometheus_url,
    )
    try:
        if options.graceful_shutdown_timeout < 0:
            raise SettingsError("--graceful-shutdown-timeout must not be negative")
        dashboard = ""
        if args.target == "compose":
            try:
                dashboard = Path(args.dashboard).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"--dashboard {args.dashboard}: {exc.strerror or exc}") from exc
        files = generate(args.target, fleet_path, options, dashboard)
    except SettingsError as exc:
        sys.stderr.write(f"embedserve deploy: error: {exc}\n")
        return 2
    out = Path(args.out)
    for path, text in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {len(files)} files under {out}\n")
    return 0
