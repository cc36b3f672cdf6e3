"""overload.md, its targets and the overload_*.png plots, all from overload.json's contents alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.report import figure, hardware_line, md_table, num, targets_table
from benchmarks.targets import rss_row, target_row

GOODPUT_FRACTION = 0.9  # goodput under the flood, as a fraction of the measured capacity
REJECT_P99_MS = 20.0  # a 429 must come at once
RECOVERY_S = 1.0  # first normal answer after the flood's end
NORMAL_FACTOR = 2.0  # "normal latency": within this many times the idle p50
SOAK_SLOPE_MIB_PER_MIN = 1.0
COLORS = {"predicted-wait": "tab:blue", "slots-only": "tab:red"}


# --- targets ---------------------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the overload issue, per flood server and for the soak."""
    rows: list[dict[str, Any]] = []
    capacity = results.get("capacity") or {}
    for name, entry in results.get("flood", {}).items():
        if "probe" in entry:
            rows += flood_targets(f"flood [{name}]", entry, capacity.get("embeddings_per_s"))
    soak = results.get("soak")
    if soak and "rss" in soak:
        rows += soak_targets(soak)
    return rows


def _failures(record: dict[str, Any]) -> tuple[int, str]:
    counts = record["status_counts"]
    bad = record["status_5xx"] + counts.get("connection_error", 0) + counts.get("unfinished", 0)
    text = (
        f"{record['status_5xx']} 5xx, {counts.get('connection_error', 0)} connection errors, "
        f"{counts.get('unfinished', 0)} unanswered, of {record['requests']:,} requests"
    )
    return bad, text


def flood_targets(label: str, e: dict[str, Any], capacity: float | None) -> list[dict[str, Any]]:
    """A flood server's targets: no server errors, goodput, admitted p99, 429 p99, recovery, RSS, Retry-After."""
    bad, text = _failures(e)
    rows = [target_row(f"{label}: no 5xx (nor connection errors or unanswered requests)", text, "0", bad == 0, bad)]
    goodput = e["embeddings_per_s"]
    if capacity:
        ratio = goodput / capacity
        measured = f"{goodput:.1f} emb/s = {ratio:.2f}x the capacity ({capacity:.1f} emb/s)"
        rows.append(
            target_row(
                f"{label}: goodput (200s)", measured, f">= {GOODPUT_FRACTION}x", ratio >= GOODPUT_FRACTION, ratio
            )
        )
    rows.append(_p99_target(label, e))
    p99_429 = e["latency_429_ms"]["p99"]
    if p99_429 is None or not math.isfinite(p99_429):
        rows.append(target_row(f"{label}: 429 p99", "no 429", f"<= {REJECT_P99_MS:g} ms", None, None))
    else:
        measured = f"{p99_429:.1f} ms (p50 {e['latency_429_ms']['p50']:.1f} ms, {e['status_429']:,} 429s)"
        rows.append(
            target_row(f"{label}: 429 p99", measured, f"<= {REJECT_P99_MS:g} ms", p99_429 <= REJECT_P99_MS, p99_429)
        )
    rows.append(_recovery_target(label, e))
    rows.append(rss_row(f"{label}: RSS flat", e))
    rows.append(_retry_after_row(label, e))
    return rows


def _p99_target(label: str, e: dict[str, Any]) -> dict[str, Any]:
    name = f"{label}: admitted (200) p99 latency"
    p99, longest = e["latency_ms"]["p99"], e["longest_forward"]
    queue_time = e["limits"]["max_queue_time_s"] or 1.0  # off (0): judged against the default 1 s
    if p99 is None or not math.isfinite(p99) or not math.isfinite(longest["bound_s"] or math.nan):
        return target_row(name, "not measured", "<= max queue time + longest forward pass", None, None)
    bound_ms = 1000.0 * (queue_time + longest["bound_s"])
    bucket = longest["histogram_bucket_s"]
    hist = f"; histogram bucket {bucket[0]:g}-{bucket[1]:g} s" if bucket else ""
    measured = f"{p99:.0f} ms (p50 {e['latency_ms']['p50']:.0f} ms)"
    required = (
        f"<= {bound_ms:.0f} ms = {queue_time:g} s + {1000 * longest['bound_s']:.0f} ms longest forward pass "
        f"({longest['source']}{hist})"
    )
    return target_row(name, measured, required, p99 <= bound_ms, p99)


def _recovery_target(label: str, e: dict[str, Any]) -> dict[str, Any]:
    probe = e["probe"]
    name = f"{label}: recovery (first normal answer after the flood's end)"
    threshold = f"normal: 200 within {probe['normal_threshold_ms']:.1f} ms = {NORMAL_FACTOR:g}x idle p50 "
    threshold += f"{probe['idle_p50_ms']:.1f} ms"
    if probe["recovery_s"] is None:
        measured = f"none within the {probe.get('after_s', '-')} s probed after the flood ({threshold})"
        return target_row(name, measured, f"<= {RECOVERY_S:g} s", False, None)
    measured = f"{probe['recovery_s']:.2f} s ({threshold})"
    return target_row(name, measured, f"<= {RECOVERY_S:g} s", probe["recovery_s"] <= RECOVERY_S, probe["recovery_s"])


def _retry_after_row(label: str, e: dict[str, Any]) -> dict[str, Any]:
    ra = e["retry_after_s"]
    if not ra["counts"]:
        return target_row(f"{label}: Retry-After on 429s", "no 429", "reported", None, None)
    counts = ", ".join(f"{value}: {n:,}" for value, n in ra["counts"].items())
    measured = f"values (s: count) {counts}"
    return target_row(f"{label}: Retry-After on 429s", measured, "reported (varies with the drain)", None, ra["max"])


def soak_targets(soak: dict[str, Any]) -> list[dict[str, Any]]:
    """The soak's targets: RSS slope after the warm-up, no server errors; what each kind got, reported."""
    rss = soak["rss"]
    slope = rss["slope_mib_per_min"]
    measured = (
        f"{slope:+.2f} MiB/min (line through {rss['samples_fitted']} samples after {rss['warmup_s'] / 60:.1f} min; "
        f"{rss['start_mib']:.0f} -> {rss['after_warmup_mib']:.0f} -> {rss['end_mib']:.0f} MiB)"
    )
    met = None if slope is None or not math.isfinite(slope) else slope <= SOAK_SLOPE_MIB_PER_MIN
    rows = [target_row("soak: RSS slope after warm-up", measured, f"<= {SOAK_SLOPE_MIB_PER_MIN:g} MiB/min", met, slope)]
    bad, text = _failures(soak)
    rows.append(target_row("soak: no 5xx (nor connection errors or unanswered requests)", text, "0", bad == 0, bad))
    shed = sum(k["shed"] for k in soak["by_kind"].values())
    shed_bad = sum(k["shed"] for kind, k in soak["by_kind"].items() if soak["kinds"][kind]["expected"] != 200)
    measured = f"{soak['unexpected']} unexpected; {shed} shed with 429 ({shed_bad} of them malformed)"
    required = "reported (valid: 200; malformed: its 4xx; any: 429 when shed)"
    rows.append(target_row("soak: answers as expected", measured, required, None, soak["unexpected"]))
    return rows


# --- markdown --------------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """overload.md's text."""
    cap = results.get("capacity") or {}
    capacity = (
        f"{num(cap.get('requests_per_s'))} req/s = {num(cap.get('embeddings_per_s'))} emb/s "
        f"({num(cap.get('tokens_per_s'), 0)} tokens/s), closed loop c={cap.get('concurrency')}, single mixed texts, "
        f"on {cap.get('measured_on')}"
        if cap
        else "not measured"
    )
    quick = (
        ["", "Quick mode: a smoke run of the harness; its flood and soak are too short for the targets to mean much."]
        if results["mode"] == "quick"
        else []
    )
    lines = [
        "# embedserve under overload",
        *quick,
        "",
        f"- date: {results['date']}, mode: {results['mode']}, wall time: {num(results.get('wall_s'), 0)} s",
        f"- command: `{results['command']}`",
        f"- hardware: {hardware_line(results['hardware'])}",
        f"- model: `{results['model']}`",
        f"- embedserve extra args: `{results['embedserve_args'] or '(none)'}`",
        f"- capacity: {capacity}",
        f"- machine busy before the run: {num(results.get('idle_check_cpu_pct'), 0)}% of a core (other CPU during "
        "each part is in its table: anything well above a few percent means noisy numbers)",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        *_flood_section(results),
        *_soak_section(results.get("soak")),
        "## Plots",
        "",
        "![the flood, both servers](overload_flood.png)",
        "![RSS over the soak](overload_soak_rss.png)",
        "",
        *_how_section(results),
    ]
    problems = {**results.get("skipped", {}), **results.get("failures", {})}
    if problems:
        lines += ["", "## Skipped or failed", ""] + [f"- {part}: {why}" for part, why in problems.items()]
    return "\n".join(lines) + "\n"


def _flood_rows(e: dict[str, Any]) -> list[tuple[str, str]]:
    lat, l429, probe, fwd = e["latency_ms"], e["latency_429_ms"], e["probe"], e["longest_forward"]
    others = {k: v for k, v in e["status_counts"].items() if k not in ("200", "429")}
    bucket = fwd["histogram_bucket_s"]
    batches = e.get("batches") or {}
    client = f"{e.get('client_connections_max', '-')}, {e['client_dropped']}, {num(e['loadgen_max_lag_ms'], 0)}"
    return [
        ("what", e["description"]),
        ("offered", f"{e['rate']:.0f} req/s for {e['duration_s']:.0f} s ({e['sent_per_s']:.0f} req/s sent)"),
        ("own capacity (closed loop)", f"{num(e['own_capacity']['requests_per_s'])} req/s"),
        ("requests / 200 / 429 / other", f"{e['requests']:,} / {e['ok']:,} / {e['status_429']:,} / {others or 0}"),
        ("goodput (emb/s answered 200)", num(e["embeddings_per_s"])),
        ("200 latency p50 / p90 / p99 / max (ms)", " / ".join(num(lat[k], 0) for k in ("p50", "p90", "p99", "max"))),
        ("429 latency p50 / p99 / max (ms)", " / ".join(num(l429[k], 1) for k in ("p50", "p99", "max"))),
        ("--max-queue-time (s)", num(e["limits"]["max_queue_time_s"], 2)),
        (
            "longest forward pass: x-inference-time max / p99 (ms)",
            f"{num(_ms(fwd['client_max_s']), 0)} / {num(_ms(fwd['client_p99_s']), 0)}",
        ),
        ("longest forward pass: histogram bucket (s)", f"{bucket[0]:g} - {bucket[1]:g}" if bucket else "-"),
        (
            "batches: count, inputs / batch, mean forward (ms)",
            f"{batches.get('batches', '-')}, {num(batches.get('batch_inputs_mean'))}, "
            f"{num(batches.get('forward_ms_mean'), 0)}",
        ),
        ("Retry-After values (s: count)", ", ".join(f"{v}: {n:,}" for v, n in e["retry_after_s"]["counts"].items())),
        ("probe idle p50 (ms)", num(probe["idle_p50_ms"], 1)),
        ("recovery after the flood (s)", num(probe["recovery_s"], 2)),
        (
            "RSS idle / thirds / max (MiB)",
            f"{num(e['rss_idle_mib'], 0)} / {e['rss_first_third_mib']:.0f}, {e['rss_middle_third_mib']:.0f}, "
            f"{e['rss_last_third_mib']:.0f} / {e['rss_max_mib']:.0f}",
        ),
        ("server CPU / other CPU (% of a core)", f"{num(e['server_cpu_pct'], 0)} / {num(e['other_cpu_pct'], 0)}"),
        ("client connections (most), drops, load generator lag (ms)", client),
    ]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def _flood_section(results: dict[str, Any]) -> list[str]:
    floods = {name: e for name, e in results.get("flood", {}).items() if "probe" in e}
    if not floods:
        return []
    columns = [dict(_flood_rows(e)) for e in floods.values()]
    rows = [[metric, *(c[metric] for c in columns)] for metric in columns[0]]
    duration = next(iter(floods.values()))["duration_s"]
    return [
        f"## Flood: 10x the capacity for {duration:.0f} s, open loop, single mixed-length texts",
        "",
        *md_table(["", *floods], rows),
        "",
    ]


def _soak_section(soak: dict[str, Any] | None) -> list[str]:
    if not soak or "by_kind" not in soak:
        return []
    rows = [
        [
            kind,
            f"{soak['kinds'][kind]['percent']:g}%",
            str(soak["kinds"][kind]["expected"]),
            f"{k['requests']:,}",
            ", ".join(f"{s}: {n:,}" for s, n in k["status_counts"].items()),
            str(k.get("shed", "-")),
            str(k["unexpected"]),
            num(k["latency_ms"]["p50"], 0),
            num(k["latency_ms"]["p99"], 0),
        ]
        for kind, k in soak["by_kind"].items()
    ]
    rss = soak["rss"]
    return [
        f"## Soak: {soak['minutes']:g} min, mixed routes at {100 * soak['fraction_of_capacity']:.0f}% of the capacity",
        "",
        f"Offered {soak['rate']:.1f} req/s ({soak['offered_tokens_per_s']:.0f} tokens/s, "
        f"{soak['offered_embeddings_per_s']:.1f} emb/s); answered {soak['embeddings_per_s']:.1f} emb/s. "
        f"Server CPU {num(soak['server_cpu_pct'], 0)}% of a core, other CPU {num(soak['other_cpu_pct'], 0)}%. RSS "
        f"{rss['start_mib']:.0f} MiB at the start, {rss['after_warmup_mib']:.0f} after the warm-up "
        f"({rss['warmup_s'] / 60:.1f} min), {rss['end_mib']:.0f} at the end, max {rss['max_mib']:.0f}; slope after the "
        f"warm-up {rss['slope_mib_per_min']:+.2f} MiB/min.",
        "",
        *md_table(
            [
                "kind",
                "share",
                "expected",
                "requests",
                "statuses",
                "shed (429)",
                "unexpected",
                "200 p50 ms",
                "200 p99 ms",
            ],
            rows,
        ),
        "",
    ]


def _how_section(results: dict[str, Any]) -> list[str]:
    plan = results.get("plan", {})
    return [
        "## How each figure is measured",
        "",
        "- **Capacity**: the best closed-loop cell of single mixed-length texts (concurrencies "
        f"{', '.join(str(c) for c in plan.get('capacity_concurrency', []))}) on the first server, as in the main run; "
        "both servers are flooded at 10x it. Each server's own capacity is in the flood table.",
        "- **Flood**: open loop, Poisson arrivals of single mixed-length texts from two load processes, whose "
        "connections together stay under the server's `--max-connections` (over it, a connection's first request "
        "gets 503): arrivals that find all of them busy are client drops, in the table. Statuses, "
        "latencies and Retry-After cover the requests sent inside the flood; goodput counts the embeddings answered "
        "200 that completed inside it, per second. 5xx, connection errors and requests unanswered 20 s after the "
        "flood all count against the first target.",
        "- **Admitted p99 bound**: `--max-queue-time` (the default 1 s for the server that turns it off) plus the "
        "longest forward pass of the flood: the largest `x-inference-time` header of the admitted requests (a "
        "single-text request runs in one batch, and the header is that batch's forward time, in whole ms, so +0.5 ms). "
        "The server's `embedserve_batch_duration_seconds` histogram, scraped before and after, gives the bucket of its "
        "longest batch as a cross-check (its upper edge bounds it; used when the header is missing).",
        "- **Recovery**: a third load process sends one short text at a steady "
        f"{num(plan.get('probe_rate'), 0)} req/s, from {num(plan.get('idle_s'), 0)} s before the flood to "
        f"{num(plan.get('after_s'), 0)} s after it. Its median latency before the flood is the idle p50; recovery is "
        "the time from the flood's last arrival to the completion of the first probe sent after it that got 200 within "
        f"{NORMAL_FACTOR:g}x the idle p50.",
        "- **RSS flat** (flood): server RSS with children sampled every "
        f"{num(plan.get('rss_interval_s'), 1)} s; the mean of the last third of the flood against the middle third "
        "(the main run's verdict: growth over 10% or 32 MiB fails).",
        "- **Soak**: a fresh server with default flags; requests from a fixed shuffled list (shares in the soak "
        "table): /v1/embeddings and /embed with 1 to 32 texts (half single), /tokenize with 1 to 8, short, mixed and "
        "long texts, and malformed ones. Poisson arrivals at 70% of the capacity's tokens/s, divided by the mean "
        "tokens per request (tokenize and malformed count as none). **RSS slope**: least squares through the RSS "
        "samples after the warm-up (2 min, or a fifth of a shorter soak), in MiB per minute.",
        "- CPU figures are percent of one core over the timed window; other CPU is what neither the server nor the "
        "load generator used (noise).",
    ]


# --- plots -----------------------------------------------------------------------------------------------------


def _plot_flood(results: dict[str, Any], path: Path) -> None:
    floods = {name: e for name, e in results.get("flood", {}).items() if "probe" in e}
    cols = max(1, len(floods))
    with figure(path, rows=3, cols=cols, size=(6.5 * cols, 10)) as axes:
        if not floods:
            axes[0][0].text(0.5, 0.5, "flood not run", ha="center", transform=axes[0][0].transAxes)
        for col, (name, e) in enumerate(floods.items()):
            _latency_panel(axes[0][col], name, e)
            _shed_panel(axes[1][col], e, (results.get("capacity") or {}).get("embeddings_per_s"))
            _rss_panel(axes[2][col], e)


def _flood_span(ax: Any, e: dict[str, Any]) -> None:
    ax.axvspan(0, e["duration_s"], color="red", alpha=0.06)
    ax.grid(alpha=0.3)


def _latency_panel(ax: Any, name: str, e: dict[str, Any]) -> None:
    tl = e["timeline"]
    color = COLORS.get(name, "tab:blue")
    for key, style in (("p50_ms", ":"), ("p99_ms", "-")):
        points = [(t, v) for t, v in zip(tl["t"], tl[key], strict=True) if v is not None]
        ax.plot([t for t, _ in points], [v for _, v in points], style, color=color, label=f"flood 200 {key[:3]}")
    probe = e["probe"]["points"]
    kinds = ((".", "probe 200", {200}), ("x", "probe 429", {429}), ("s", "probe other", None))
    for marker, label, statuses in kinds:
        pts = [(t, ms) for t, ms, s in probe if ms is not None and (s in statuses if statuses else s not in (200, 429))]
        if pts:
            ax.plot([t for t, _ in pts], [ms for _, ms in pts], marker, color="black", ms=3, label=label, alpha=0.6)
    ax.axhline(e["probe"]["normal_threshold_ms"], color="green", lw=0.8, label="normal (2x idle p50)")
    ax.set_yscale("log")
    ax.set_title(f"{name}: latency by send time")
    ax.set_ylabel("ms (log)")
    _flood_span(ax, e)
    ax.legend(fontsize=7)


def _shed_panel(ax: Any, e: dict[str, Any], capacity: float | None) -> None:
    tl = e["timeline"]
    share = [100.0 * n / s if s else None for n, s in zip(tl["status_429"], tl["sent"], strict=True)]
    ax.plot(tl["t"], [v if v is not None else math.nan for v in share], color="tab:red", label="429 % of sent")
    ax.set_ylabel("429 % of requests sent")
    ax.set_ylim(0, 105)
    twin = ax.twinx()
    twin.plot(tl["t"], tl["goodput"], color="tab:green", label="goodput emb/s")
    if capacity:
        twin.axhline(capacity, color="tab:green", ls="--", lw=0.8, label="capacity")
    twin.set_ylabel("emb/s answered 200")
    twin.set_ylim(bottom=0)
    _flood_span(ax, e)
    ax.set_title("shed share and goodput")
    ax.legend(loc="upper left", fontsize=7)
    twin.legend(loc="upper right", fontsize=7)


def _rss_panel(ax: Any, e: dict[str, Any]) -> None:
    series = e["rss_series"]
    ax.plot([t for t, _ in series], [m for _, m in series], ".-", ms=2)
    ax.set_ylim(0, max((m for _, m in series), default=1.0) * 1.2)
    ax.set_xlabel("seconds since the flood started")
    ax.set_ylabel("RSS incl. children (MiB)")
    _flood_span(ax, e)


def _plot_soak(results: dict[str, Any], path: Path) -> None:
    soak = results.get("soak")
    with figure(path) as ax:
        if not soak or "rss" not in soak:
            ax.text(0.5, 0.5, "soak not run", ha="center", transform=ax.transAxes)
            return
        rss = soak["rss"]
        minutes = [t / 60.0 for t, _ in rss["series"]]
        ax.plot(minutes, [m for _, m in rss["series"]], ".", ms=2, label="RSS")
        slope = rss["slope_mib_per_min"]
        fitted = [(t / 60.0, m) for t, m in rss["series"] if rss["warmup_s"] <= t <= rss["end_s"]]
        if fitted and slope is not None and math.isfinite(slope):
            mean_t = sum(t for t, _ in fitted) / len(fitted)
            mean_m = sum(m for _, m in fitted) / len(fitted)
            ends = (fitted[0][0], fitted[-1][0])
            line = [mean_m + slope * (t - mean_t) for t in ends]
            ax.plot(ends, line, color="black", label=f"fit after warm-up: {slope:+.2f} MiB/min")
        ax.axvline(rss["warmup_s"] / 60.0, color="gray", ls=":", label="end of warm-up")
        ax.axvline(rss["end_s"] / 60.0, color="gray", ls="--", label="end of the load")
        ax.set_ylim(0, max(m for _, m in rss["series"]) * 1.2)
        ax.set_xlabel("minutes since the soak started")
        ax.set_ylabel("RSS incl. children (MiB)")
        ax.set_title(f"embedserve RSS, {soak['minutes']:g} min soak at 70% of capacity, mixed routes")
        ax.grid(alpha=0.3)
        ax.legend()


def write(results: dict[str, Any], out: Path) -> None:
    """Write overload.md and the two PNGs into ``out``."""
    _plot_flood(results, out / "overload_flood.png")
    _plot_soak(results, out / "overload_soak_rss.png")
    (out / "overload.md").write_text(markdown(results))
