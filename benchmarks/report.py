"""Targets, summary.md and the PNG plots, all computed from results.json's contents alone."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SERVER_ORDER = ("embedserve", "naive", "infinity")
COLORS = {"embedserve": "tab:blue", "naive": "tab:orange", "infinity": "tab:green"}


def find_cell(results: dict[str, Any], server: str, mode: str, mix: str, per_request: int, load: float) -> Any:
    """The cell of a server with this shape (``load``: concurrency when closed, rate when open), or None."""
    key = "concurrency" if mode == "closed" else "rate"
    for cell in results.get("servers", {}).get(server, {}).get("cells", []):
        if (cell["mode"], cell["mix"], cell["texts_per_request"]) == (mode, mix, per_request) and math.isclose(
            cell[key] or 0.0, load
        ):
            return cell
    return None


def _eps(results: dict[str, Any], server: str) -> float | None:
    cell = find_cell(results, server, "closed", "mixed", 1, 32)
    return None if cell is None else float(cell["embeddings_per_s"])


def _p50_short(results: dict[str, Any], server: str) -> float | None:
    cell = find_cell(results, server, "closed", "short", 1, 1)
    if cell is None or cell["latency_ms"]["p50"] is None:
        return None
    return float(cell["latency_ms"]["p50"])


def _target(name: str, measured: str, required: str, met: bool | None, value: float | None) -> dict[str, Any]:
    return {"target": name, "measured": measured, "required": required, "met": met, "value": value}


def _ratio_target(name: str, num: float | None, den: float | None, bound: float, higher: bool, unit: str) -> Any:
    sign = ">=" if higher else "<="
    required = f"{sign} {bound:g}x"
    if num is None or den is None or den == 0:
        return _target(name, "not measured", required, None, None)
    ratio = num / den
    met = ratio >= bound if higher else ratio <= bound
    return _target(name, f"{ratio:.2f}x ({num:.1f} vs {den:.1f} {unit})", required, met, ratio)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with its measured value, the required value and whether it is met."""
    ceiling = results.get("ceiling", {})
    ceiling_best = ceiling.get("mixes", {}).get("mixed", {}).get("best_texts_per_s")
    direct = ceiling.get("direct", {}).get("p50_ms")
    es = _eps(results, "embedserve")
    es_p50 = _p50_short(results, "embedserve")
    inf_p50 = _p50_short(results, "infinity")
    out = [
        _ratio_target(
            "c=32 single mixed: embedserve emb/s vs ceiling's best texts/s", es, ceiling_best, 0.85, True, "/s"
        ),
        _ratio_target(
            "c=32 single mixed: embedserve emb/s vs naive server", es, _eps(results, "naive"), 1.5, True, "/s"
        ),
        _ratio_target(
            "c=32 single mixed: embedserve emb/s vs Infinity", es, _eps(results, "infinity"), 1.2, True, "/s"
        ),
        _ratio_target("c=1 single short: embedserve p50 vs one direct forward pass", es_p50, direct, 1.3, False, "ms"),
    ]
    if es_p50 is None or inf_p50 is None:
        out.append(_target("c=1 single short: embedserve p50 below Infinity's", "not measured", "< 1x", None, None))
    else:
        measured = f"{es_p50:.2f} ms vs {inf_p50:.2f} ms ({es_p50 / inf_p50:.2f}x)"
        out.append(
            _target(
                "c=1 single short: embedserve p50 below Infinity's",
                measured,
                "< 1x",
                es_p50 < inf_p50,
                es_p50 / inf_p50,
            )
        )
    out += _token_targets(results)
    overload = results.get("overload")
    if overload is None:
        out.append(_target("RSS bounded under 10x overload", "not measured", "bounded", None, None))
    else:
        growth = overload["rss_growth_mib"]
        measured = (
            f"middle third {overload['rss_middle_third_mib']:.0f} -> last third "
            f"{overload['rss_last_third_mib']:.0f} MiB ({growth:+.0f} MiB), 429 rate {100 * overload['rate_429']:.0f}%"
        )
        required = f"growth <= {overload['rss_growth_allowed_mib']:.0f} MiB"
        out.append(_target("RSS bounded under 10x overload", measured, required, bool(overload["rss_bounded"]), growth))
    return out


def _token_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU targets: embedserve's tokens/s against the ceiling's, with single-text requests at the highest
    concurrency and with 32-text requests at the best one. Computed on any device; required only on CUDA."""
    ceiling = results.get("ceiling", {})
    on_gpu = str(ceiling.get("device", "")).startswith("cuda")
    ceiling_tokens = ceiling.get("mixes", {}).get("mixed", {}).get("best_tokens_per_s")
    cells = [
        c
        for c in results.get("servers", {}).get("embedserve", {}).get("cells", [])
        if c["mode"] == "closed" and c["mix"] == "mixed"
    ]
    single = [c for c in cells if c["texts_per_request"] == 1]
    multi = [c for c in cells if c["texts_per_request"] > 1]
    highest = max(single, key=lambda c: c["concurrency"], default=None)
    best_multi = max(multi, key=lambda c: c["tokens_per_s"], default=None)
    out = []
    for name, cell, bound in (
        (f"c={highest['concurrency'] if highest else '?'} single mixed", highest, 0.8),
        (f"c={best_multi['concurrency'] if best_multi else '?'} 32-text mixed", best_multi, 0.9),
    ):
        target = _ratio_target(
            f"{name}: embedserve tokens/s vs ceiling's (GPU target)",
            None if cell is None else float(cell["tokens_per_s"]),
            ceiling_tokens,
            bound,
            True,
            "tokens/s",
        )
        if not on_gpu and target["met"] is not None:
            target["met"] = None
            target["required"] += " on a GPU (informative here)"
        out.append(target)
    return out


# --- markdown --------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _status(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "-"}[met]


def _headline(results: dict[str, Any]) -> list[str]:
    header = ["server", "c=1", "c=8", "c=32", "c=128", "p50 / p99 at c=32 (ms)", "p50 c=1 short (ms)", "peak RSS (MiB)"]
    rows = []
    for server in SERVER_ORDER:
        if server not in results.get("servers", {}) or "cells" not in results["servers"][server]:
            continue
        sweep = [find_cell(results, server, "closed", "mixed", 1, c) for c in (1, 8, 32, 128)]
        c32 = sweep[2]
        lat = "-" if c32 is None else f"{_num(c32['latency_ms']['p50'])} / {_num(c32['latency_ms']['p99'])}"
        peak = max(c["peak_rss_mib"] for c in results["servers"][server]["cells"])
        rows.append(
            [server]
            + [_num(c and c["embeddings_per_s"]) for c in sweep]
            + [lat, _num(_p50_short(results, server), 2), _num(peak, 0)]
        )
    ceiling = results.get("ceiling")
    if ceiling and "mixed" in ceiling["mixes"]:
        best = ceiling["mixes"]["mixed"]
        direct = _num(ceiling["direct"]["p50_ms"], 2)
        note = f"{_num(best['best_texts_per_s'])} (batch {best['best_batch_size']})"
        rows.append(["ceiling (in-process)", "", "", note, "", "", f"{direct} (direct forward)", ""])
    lines = ["## Headline: embeddings/s, single-text requests, mixed lengths, closed loop", ""]
    return lines + _table(header, rows)


def _ceiling_section(ceiling: dict[str, Any]) -> list[str]:
    sizes = sorted({int(s) for m in ceiling["mixes"].values() for s in m["by_batch_size"]})
    header = ["mix", "best texts/s", "best batch", "tokens/s", *[f"bs {s}" for s in sizes]]
    rows = [
        [mix, _num(m["best_texts_per_s"]), str(m["best_batch_size"]), _num(m["best_tokens_per_s"], 0)]
        + [_num(m["by_batch_size"].get(str(s))) for s in sizes]
        for mix, m in ceiling["mixes"].items()
    ]
    direct = ceiling["direct"]
    lines = [
        "## Ceiling: the model in-process (tokenize + forward + pool + normalize, length-sorted batches)",
        "",
        f"Device {ceiling['device']}, {ceiling['dtype']}, {ceiling['torch_threads']} torch threads, "
        f"{ceiling['pooling']} pooling. One direct forward pass of a short input: p50 {_num(direct['p50_ms'], 2)} ms, "
        f"p90 {_num(direct['p90_ms'], 2)} ms over {direct['reps']} repetitions. Other processes used "
        f"{_num(ceiling.get('other_cpu_pct'), 0)}% of a core meanwhile.",
        "",
    ]
    return lines + _table(header, rows)


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
        lines += [f"### {server} ({entry.get('version', '')}, up in {_num(entry.get('startup_s'))} s)", ""]
        rows = [
            [
                _cell_name(c),
                _num(c["embeddings_per_s"]),
                _num(c["tokens_per_s"], 0),
                _num(c["requests_per_s"]),
                _num(c["latency_ms"]["p50"]),
                _num(c["latency_ms"]["p90"]),
                _num(c["latency_ms"]["p99"]),
                f"{100 * c['rate_429']:.1f}%",
                f"{100 * c['error_rate']:.1f}%",
                str(c["client_dropped"]),
                _num(c["peak_rss_mib"], 0),
                _num(c.get("server_cpu_pct"), 0),
                _num(c.get("other_cpu_pct"), 0),
            ]
            for c in entry["cells"]
        ]
        lines += [*_table(header, rows), ""]
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
                *(_num(ms[k], 2) for k in ("parse", "tokenization", "queue", "inference", "serialization")),
                _num(st["other_in_server_ms"], 2),
                _num(st["server_ms"], 2),
                _num(st.get("outside_server_ms"), 2),
                _num(c["latency_ms"]["mean"], 2),
                str(st["batches"]),
                _num(st["batch_inputs_mean"]),
                _num(st["forward_ms_mean"], 2),
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
        *_table(header, rows),
        "",
    ]


def _overload_section(overload: dict[str, Any]) -> list[str]:
    return [
        "## Overload (embedserve only)",
        "",
        f"Open loop at {overload['rate']:.0f} req/s (10x the measured capacity) for {overload['duration_s']:.0f} s, "
        f"single-text mixed. 429 rate {100 * overload['rate_429']:.1f}%, error rate "
        f"{100 * overload['error_rate']:.1f}%, {_num(overload['embeddings_per_s'])} emb/s still served, p50 of the "
        f"accepted requests {_num(overload['latency_ms']['p50'])} ms (p99 {_num(overload['latency_ms']['p99'])} ms). "
        f"RSS idle {_num(overload['rss_idle_mib'], 0)} MiB; mean of the first, middle and last thirds of the window "
        f"{overload['rss_first_third_mib']:.0f} / {overload['rss_middle_third_mib']:.0f} / "
        f"{overload['rss_last_third_mib']:.0f} MiB, max {overload['rss_max_mib']:.0f} MiB: "
        f"{'bounded' if overload['rss_bounded'] else 'grew'} (the verdict compares the last third with the middle "
        "one: the first includes the admission queue filling up). Client-side drops (all connections busy): "
        f"{overload['client_dropped']}.",
        "",
    ]


def summary_markdown(results: dict[str, Any]) -> str:
    """summary.md's text."""
    hw = results["hardware"]
    lines = [
        "# embedserve benchmark",
        "",
        f"- date: {results['date']}, mode: {results['mode']}, wall time: {_num(results.get('wall_s'), 0)} s",
        f"- command: `{results['command']}`",
        f"- hardware: {hw['cpu_model']}, {hw['logical_cores']} logical cores, {hw['ram_gib']} GiB RAM; "
        f"torch {hw.get('torch_version')}, {hw.get('torch_threads')} torch threads",
        f"- model: `{results['model']}` (max length {results['max_length']} tokens)",
        f"- embedserve extra args: `{results['embedserve_args'] or '(none)'}`",
        f"- closed-loop capacity used for the open-loop rates: {_num(results.get('capacity_rps'))} req/s",
        "",
        "## Targets",
        "",
        *_table(
            ["target", "measured", "required", "result"],
            [[t["target"], t["measured"], t["required"], _status(t["met"])] for t in results.get("targets", [])],
        ),
        "",
        *_headline(results),
        "",
    ]
    if "ceiling" in results:
        lines += [*_ceiling_section(results["ceiling"]), ""]
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
def _figure(path: Path) -> Iterator[Any]:
    """The axes of one plot, saved to ``path`` (and the figure closed) when the block ends."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plot_throughput(results: dict[str, Any], path: Path) -> None:
    with _figure(path) as ax:
        for server in SERVER_ORDER:
            points = [find_cell(results, server, "closed", "mixed", 1, c) for c in (1, 8, 32, 128)]
            xs = [c["concurrency"] for c in points if c]
            ys = [c["embeddings_per_s"] for c in points if c]
            if xs:
                ax.plot(xs, ys, marker="o", label=server, color=COLORS[server])
        best = results.get("ceiling", {}).get("mixes", {}).get("mixed", {}).get("best_texts_per_s")
        if best:
            ax.axhline(best, linestyle="--", color="gray", label="ceiling (in-process)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32, 128], labels=["1", "8", "32", "128"])
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("embeddings/s")
        ax.set_title("Throughput, single-text requests, mixed lengths")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()


def _plot_cdf(results: dict[str, Any], path: Path) -> None:
    with _figure(path) as ax:
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
    with _figure(path) as ax:
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
