"""summary.md and the PNG plots, all computed from results.json's contents alone (targets: benchmarks/targets.py)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.targets import cpu_per_request_short, find_cell, p50_short, targets
from benchmarks.variants import VARIANTS

__all__ = [
    "figure",
    "hardware_line",
    "machine_line",
    "md_table",
    "num",
    "summary_markdown",
    "targets",
    "verdict",
    "write",
    "write_standalone",
]

SERVER_ORDER = tuple(v.name for v in VARIANTS)
COLORS = {
    "embedserve": "tab:blue",
    "embedserve-torch": "tab:cyan",
    "embedserve-int8": "tab:purple",
    "naive": "tab:orange",
    "infinity": "tab:green",
    "infinity-optimum": "tab:olive",
}


# --- markdown --------------------------------------------------------------------------------------------------


def num(value: Any, digits: int = 1) -> str:
    """A number with thousands separators and ``digits`` decimals; "-" for None or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(met: bool | None) -> str:
    """A target's result column: met, **not met**, or "-" (reported only, or not measured)."""
    return {True: "met", False: "**not met**", None: "-"}[met]


def _headline(results: dict[str, Any]) -> list[str]:
    header = ["server", "c=1", "c=8", "c=32", "c=128", "p50 / p99 at c=32 (ms)", "p50 c=1 short (ms)", "peak RSS (MiB)"]
    rows = []
    for server in SERVER_ORDER:
        if server not in results.get("servers", {}) or "cells" not in results["servers"][server]:
            continue
        sweep = [find_cell(results, server, "closed", "mixed", 1, c) for c in (1, 8, 32, 128)]
        c32 = sweep[2]
        lat = "-" if c32 is None else f"{num(c32['latency_ms']['p50'])} / {num(c32['latency_ms']['p99'])}"
        peak = max(c["peak_rss_mib"] for c in results["servers"][server]["cells"])
        rows.append(
            [server]
            + [num(c and c["embeddings_per_s"]) for c in sweep]
            + [lat, num(p50_short(results, server), 2), num(peak, 0)]
        )
    ceiling = results.get("ceiling")
    if ceiling and "mixed" in ceiling["mixes"]:
        best = ceiling["mixes"]["mixed"]
        direct = num(ceiling["direct"]["p50_ms"], 2)
        note = f"{num(best['best_texts_per_s'])} (batch {best['best_batch_size']})"
        rows.append(["ceiling (in-process, torch)", "", "", note, "", "", f"{direct} (direct forward)", ""])
    choice = results.get("ceiling_choice")
    if choice and choice["engine"] != "torch":
        note = f"{num(choice['best_texts_per_s'])} (batch {choice['best_batch_size']})"
        direct = f"{num(choice['direct_p50_ms'], 2)} (single input)"
        rows.append([f"near-lossless ceiling ({choice['engine']})", "", "", note, "", "", direct, ""])
    lines = ["## Headline: embeddings/s, single-text requests, mixed lengths, closed loop", ""]
    return lines + md_table(header, rows)


def _ceiling_section(ceiling: dict[str, Any]) -> list[str]:
    sizes = sorted({int(s) for m in ceiling["mixes"].values() for s in m["by_batch_size"]})
    header = ["mix", "best texts/s", "best batch", "tokens/s", *[f"bs {s}" for s in sizes]]
    rows = [
        [mix, num(m["best_texts_per_s"]), str(m["best_batch_size"]), num(m["best_tokens_per_s"], 0)]
        + [num(m["by_batch_size"].get(str(s))) for s in sizes]
        for mix, m in ceiling["mixes"].items()
    ]
    direct = ceiling["direct"]
    lines = [
        "## Ceiling: the model in-process (tokenize + forward + pool + normalize, length-sorted batches)",
        "",
        f"Device {ceiling['device']}, {ceiling['dtype']}, {ceiling['torch_threads']} torch threads, "
        f"{ceiling['pooling']} pooling. One direct forward pass of a short input: p50 {num(direct['p50_ms'], 2)} ms, "
        f"p90 {num(direct['p90_ms'], 2)} ms over {direct['reps']} repetitions. Other processes used "
        f"{num(ceiling.get('other_cpu_pct'), 0)}% of a core meanwhile.",
        "",
    ]
    return lines + md_table(header, rows)


def _engines_section(results: dict[str, Any]) -> list[str]:
    """Every ceiling engine: best texts/s per mix, single-input p50, agreement with torch float32."""
    from benchmarks.agreement import near_lossless

    ceilings = results.get("ceilings") or {}
    mixes = [m for m in ("short", "mixed", "long") if any(m in c.get("mixes", {}) for c in ceilings.values())]
    header = ["engine", "runtime", "precision", *[f"{m} texts/s (batch)" for m in mixes], "single input p50 ms"]
    header += ["mean cosine", "min cosine", "near-lossless", "other CPU %"]
    rows = []
    for name, c in ceilings.items():
        if c.get("skipped"):
            rows.append([name, "", "", *("" for _ in mixes), "", "", "", f"skipped: {c['skipped']}", ""])
            continue
        agree = c.get("agreement") or {}
        best = [c["mixes"].get(m) for m in mixes]
        rows.append(
            [
                name,
                str(c.get("runtime", "")),
                str(c.get("precision") or c.get("dtype", "")),
                *(f"{num(b['best_texts_per_s'])} ({b['best_batch_size']})" if b else "-" for b in best),
                num(c.get("direct", {}).get("p50_ms"), 2),
                "reference" if name == "torch" else num(agree.get("mean_cosine"), 6),
                "reference" if name == "torch" else num(agree.get("min_cosine"), 6),
                "yes" if near_lossless(c) else "no",
                num(c.get("other_cpu_pct"), 0),
            ]
        )
    choice = results.get("ceiling_choice")
    picked = (
        f"The near-lossless ceiling of the engine targets is **{choice['engine']}**: "
        f"{num(choice['best_texts_per_s'])} texts/s on mixed lengths (the fastest with mean cosine >= "
        f"{choice['near_lossless_mean_cosine']} to torch float32; the fastest of all is "
        f"{choice['fastest_any_engine']}, {num(choice['fastest_any_texts_per_s'])} texts/s)."
        if choice
        else "No near-lossless engine measured mixed lengths."
    )
    return [
        "## Ceiling engines (in-process, same tokenizer, length-sorted batches, best batch size)",
        "",
        "Tokenize + forward + pool + normalize per engine, each in its own process with the same intra-op threads. "
        "Agreement: cosine of each engine's vectors with torch float32's on the same texts (all of the ceiling's). "
        + picked,
        "",
        *md_table(header, rows),
        "",
    ]


def _servers_section(results: dict[str, Any]) -> list[str]:
    """Every server variant: what it is, its agreement with torch float32, its c=1 latency and CPU per request."""
    header = ["server", "what", "version", "mean cosine", "min cosine", "c=1 short p50 ms", "CPU ms / request"]
    rows = []
    for server in SERVER_ORDER:
        entry = results.get("servers", {}).get(server)
        if not entry:
            continue
        agree = entry.get("agreement") or {}
        what = entry.get("description", "")
        if entry.get("infinity_flavor"):
            what += f" ({entry['infinity_flavor']} set-up)"
        if entry.get("inputs_clipped_to_max_length"):
            what += "; inputs cut at the model's maximum length"
        rows.append(
            [
                server,
                what,
                str(entry.get("version", "")),
                num(agree.get("mean_cosine"), 6),
                num(agree.get("min_cosine"), 6),
                num(p50_short(results, server), 2),
                num(cpu_per_request_short(results, server), 2),
            ]
        )
    if not rows:
        return []
    lines = [
        "## Servers: agreement with torch float32 and CPU per request",
        "",
        "Agreement: each server's vectors of the ceiling's mixed-length texts (requests of 32) against torch float32 "
        "in-process. CPU per request: CPU seconds of the server's processes (psutil) over the timed window of the "
        "concurrency-1 short-input cell, divided by the requests answered in it.",
        "",
        *md_table(header, rows),
        "",
    ]
    skipped = results.get("skipped") or {}
    if skipped:
        lines += ["Skipped (the server rejected the variant's flags):", ""]
        lines += [f"- {part}: {why}" for part, why in skipped.items()] + [""]
    return lines


def _cell_name(cell: dict[str, Any]) -> str:
    shape = "single" if cell["texts_per_request"] == 1 else f"{cell['texts_per_request']}-text"
    if cell["mode"] == "closed":
        return f"closed c={cell['concurrency']} {shape} {cell['mix']}"
    return f"open {cell['rate']:.1f} req/s ({cell['rate_note']}) {shape} {cell['mix']}"


def _cells_section(results: dict[str, Any]) -> list[str]:
    header = ["cell", "emb/s", "tokens/s", "req/s", "p50 ms", "p90 ms", "p99 ms", "429", "errors", "client drops"]
    header += ["peak RSS MiB", "server CPU %", "other CPU %"]
    lines = ["## All cells", ""]
    for server in SERVER_ORDER:
        entry = results.get("servers", {}).get(server)
        if not entry or "cells" not in entry:
            continue
        lines += [f"### {server} ({entry.get('version', '')}, up in {num(entry.get('startup_s'))} s)", ""]
        rows = [
            [
                _cell_name(c),
                num(c["embeddings_per_s"]),
                num(c["tokens_per_s"], 0),
                num(c["requests_per_s"]),
                num(c["latency_ms"]["p50"]),
                num(c["latency_ms"]["p90"]),
                num(c["latency_ms"]["p99"]),
                f"{100 * c['rate_429']:.1f}%",
                f"{100 * c['error_rate']:.1f}%",
                str(c["client_dropped"]),
                num(c["peak_rss_mib"], 0),
                num(c.get("server_cpu_pct"), 0),
                num(c.get("other_cpu_pct"), 0),
            ]
            for c in entry["cells"]
        ]
        lines += [*md_table(header, rows), ""]
    return lines


def _stages_section(results: dict[str, Any]) -> list[str]:
    """embedserve's per-request time by stage, from its own metrics, for every cell."""
    cells = [c for c in results.get("servers", {}).get("embedserve", {}).get("cells", []) if c.get("stages")]
    if not cells:
        return []
    header = ["cell", "parse", "tokenize", "queue", "inference", "serialize", "other in server", "server total"]
    header += ["outside server", "client mean", "batches", "inputs/batch", "forward ms", "padding"]
    rows = []
    for c in cells:
        st = c["stages"]
        ms = st["stages_ms"]
        rows.append(
            [
                _cell_name(c),
                *(num(ms[k], 2) for k in ("parse", "tokenization", "queue", "inference", "serialization")),
                num(st["other_in_server_ms"], 2),
                num(st["server_ms"], 2),
                num(st.get("outside_server_ms"), 2),
                num(c["latency_ms"]["mean"], 2),
                str(st["batches"]),
                num(st["batch_inputs_mean"]),
                num(st["forward_ms_mean"], 2),
                "-" if st["padding_ratio"] is None else f"{100 * st['padding_ratio']:.0f}%",
            ]
        )
    return [
        "## Where embedserve's time goes (mean ms per request, from its own metrics)",
        "",
        "Stages as embedserve's histograms measure them: parse (arrival to admission: body read and validated), "
        "tokenize, queue (wait for the first batch), inference (the forward passes its inputs ran in), serialize "
        "(vectors to the response body). Other in server: the rest of the handler's time (waits between the batches "
        "of a multi-batch request, event-loop scheduling). Outside server: the client's mean latency minus the "
        "server's (HTTP parsing and framing in uvicorn, sockets, the load generator).",
        "",
        *md_table(header, rows),
        "",
    ]


def _overload_section(overload: dict[str, Any]) -> list[str]:
    return [
        "## Overload (embedserve only)",
        "",
        f"Open loop at {overload['rate']:.0f} req/s (10x the measured capacity) for {overload['duration_s']:.0f} s, "
        f"single-text mixed. 429 rate {100 * overload['rate_429']:.1f}%, error rate "
        f"{100 * overload['error_rate']:.1f}%, {num(overload['embeddings_per_s'])} emb/s still served, p50 of the "
        f"accepted requests {num(overload['latency_ms']['p50'])} ms (p99 {num(overload['latency_ms']['p99'])} ms). "
        f"RSS idle {num(overload['rss_idle_mib'], 0)} MiB; mean of the first, middle and last thirds of the window "
        f"{overload['rss_first_third_mib']:.0f} / {overload['rss_middle_third_mib']:.0f} / "
        f"{overload['rss_last_third_mib']:.0f} MiB, max {overload['rss_max_mib']:.0f} MiB: "
        f"{'bounded' if overload['rss_bounded'] else 'grew'} (the verdict compares the last third with the middle "
        "one: the first includes the admission queue filling up). Client-side drops (all connections busy): "
        f"{overload['client_dropped']}.",
        "",
    ]


def targets_table(results: dict[str, Any]) -> list[str]:
    """The targets of a results file as a markdown table: what was measured, what was required, met or not."""
    return md_table(
        ["target", "measured", "required", "result"],
        [[t["target"], t["measured"], t["required"], verdict(t["met"])] for t in results.get("targets", [])],
    )


def hardware_line(hw: dict[str, Any]) -> str:
    """CPU, cores, RAM and torch's version and threads, in one line."""
    return (
        f"{hw['cpu_model']}, {hw['logical_cores']} logical cores, {hw['ram_gib']} GiB RAM; "
        f"torch {hw.get('torch_version')}, {hw.get('torch_threads')} torch threads"
    )


def machine_line(hw: dict[str, Any]) -> str:
    """CPU, cores and RAM in one line (the standalone benchmarks' hardware line)."""
    return f"{hw['cpu_model']}, {hw['logical_cores']} logical cores, {hw['ram_gib']} GiB RAM, {hw.get('os', '?')}"


def write_standalone(
    out: Path,
    stem: str,
    results: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
) -> Path:
    """A standalone benchmark's ``<stem>.json`` (no local paths, no NaN), ``<stem>.md`` and ``<stem>.png`` in
    ``out``; returns the .md's path. Its ``--report-only`` calls this again with the JSON it reads back."""
    from benchmarks.overload import scrub
    from benchmarks.runner import finite, write_json

    results = finite(scrub(results))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", results)
    plot(results, out / f"{stem}.png")
    (out / f"{stem}.md").write_text(markdown(results))
    return out / f"{stem}.md"


def summary_markdown(results: dict[str, Any]) -> str:
    """summary.md's text."""
    hw = results["hardware"]
    gpu = (results.get("ceiling") or {}).get("gpu")
    lines = [
        "# embedserve benchmark",
        "",
        f"- date: {results['date']}, mode: {results['mode']}, wall time: {num(results.get('wall_s'), 0)} s",
        f"- command: `{results['command']}`",
        f"- hardware: {hardware_line(hw)}" + (f"; GPU: {gpu}" if gpu else ""),
        f"- model: `{results['model']}` (max length {results['max_length']} tokens)",
        f"- embedserve extra args: `{results['embedserve_args'] or '(none)'}`",
        f"- closed-loop capacity used for the open-loop rates: {num(results.get('capacity_rps'))} req/s",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        *_headline(results),
        "",
    ]
    if "ceiling" in results:
        lines += [*_ceiling_section(results["ceiling"]), ""]
    if results.get("ceilings"):
        lines += _engines_section(results)
    lines += _servers_section(results)
    if "overload" in results:
        lines += _overload_section(results["overload"])
    lines += _stages_section(results)
    lines += _cells_section(results)
    lines += [
        "## Plots",
        "",
        "![throughput vs concurrency](throughput_vs_concurrency.png)",
        "![latency CDF at c=32](latency_cdf_c32.png)",
        "![RSS under overload](overload_rss.png)",
        "",
        "## How to read this",
        "",
        "- Throughput: closed loop spreads each successful request's texts over its lifetime and counts the part "
        "inside the timed window (Little's law; no quantization by whole long requests); open loop counts the "
        "requests completed inside the window. Latency, 429 and error rates cover the requests sent inside the "
        "window, not those of the warm-up (open loop: latency counts from the scheduled arrival).",
        "- Errors include connection failures and requests still unanswered when the grace period after the "
        "window ended (`status_counts` in results.json tells which). Client drops: open-loop arrivals that found "
        "all of the load generator's connections (512 per worker process) waiting on the server, so were never sent.",
        "- server CPU % and other CPU % are percent of one core during the timed window; other CPU is what neither "
        "the server nor the load generator used (noise from other work on the machine).",
        '- Every server gets the same inputs through `POST /v1/embeddings` with `{"input": [...], "model": ...}`, '
        "one server at a time; the load generator runs in separate processes over raw keep-alive HTTP/1.1.",
    ]
    if results.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {part}: {why}" for part, why in results["failures"].items()]
    return "\n".join(lines) + "\n"


# --- plots -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def figure(path: Path, rows: int = 1, cols: int = 1, size: tuple[float, float] = (7, 4.5)) -> Iterator[Any]:
    """The axes of one plot (an array of them for several rows or columns), saved to ``path`` (and the figure
    closed) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(rows, cols, figsize=size, squeeze=rows * cols == 1)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plot_throughput(results: dict[str, Any], path: Path) -> None:
    with figure(path) as ax:
        for server in SERVER_ORDER:
            points = [find_cell(results, server, "closed", "mixed", 1, c) for c in (1, 8, 32, 128)]
            xs = [c["concurrency"] for c in points if c]
            ys = [c["embeddings_per_s"] for c in points if c]
            if xs:
                ax.plot(xs, ys, marker="o", label=server, color=COLORS[server])
        best = results.get("ceiling", {}).get("mixes", {}).get("mixed", {}).get("best_texts_per_s")
        if best:
            ax.axhline(best, linestyle="--", color="gray", label="ceiling (in-process, torch)")
        choice = results.get("ceiling_choice")
        if choice and choice["engine"] != "torch":
            label = f"near-lossless ceiling ({choice['engine']})"
            ax.axhline(choice["best_texts_per_s"], linestyle=":", color="black", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32, 128], labels=["1", "8", "32", "128"])
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("embeddings/s")
        ax.set_title("Throughput, single-text requests, mixed lengths")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()


def _plot_cdf(results: dict[str, Any], path: Path) -> None:
    with figure(path) as ax:
        for server in SERVER_ORDER:
            cell = find_cell(results, server, "closed", "mixed", 1, 32)
            values = cell.get("latency_quantiles_ms") if cell else None
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.plot(values, ys, label=server, color=COLORS[server])
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title("Latency CDF, 32 concurrent single-text clients, mixed lengths")
        ax.grid(alpha=0.3, which="both")
        ax.legend()


def _plot_rss(results: dict[str, Any], path: Path) -> None:
    with figure(path) as ax:
        overload = results.get("overload")
        if overload:
            xs = [t for t, _ in overload["rss_series"]]
            ys = [mib for _, mib in overload["rss_series"]]
            ax.plot(xs, ys, marker=".", color=COLORS["embedserve"], label="embedserve RSS")
            offered = f"{overload['rate']:.0f} req/s offered"
            ax.axvspan(0, overload["duration_s"], color="red", alpha=0.08, label=offered)
            ax.set_ylim(0, max(ys) * 1.2)
            ax.legend()
        else:
            ax.text(0.5, 0.5, "overload phase not run", ha="center", transform=ax.transAxes)
        ax.set_xlabel("seconds since the overload started")
        ax.set_ylabel("RSS incl. children (MiB)")
        ax.set_title("embedserve memory under 10x overload")
        ax.grid(alpha=0.3)


def write(results: dict[str, Any], out: Path) -> None:
    """Write summary.md and the three PNGs into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    _plot_throughput(results, out / "throughput_vs_concurrency.png")
    _plot_cdf(results, out / "latency_cdf_c32.png")
    _plot_rss(results, out / "overload_rss.png")
    (out / "summary.md").write_text(summary_markdown(results))
