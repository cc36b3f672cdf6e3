"""The issue's targets, each with its measured value, the required value and met / not met, from results.json alone.

Two generations of targets:

- the torch engine's (ceiling = what it runs, in-process: the TorchScript trace where the run measured it, else
  eager torch; naive server; Infinity's torch engine; RSS under overload), read from ``embedserve-torch``
  (``--engine torch``) when the run measured it, else from ``embedserve`` (runs from before the engines existed, or
  a server that does not have ``--engine`` yet);
- the engines' (ceiling = the fastest near-lossless engine in-process; Infinity's optimum engine; CPU per request;
  int8 against the torch engine), read from ``embedserve`` with its default flags.
"""

from __future__ import annotations

import math
from typing import Any

TORCH_VARIANT = "embedserve-torch"
INT8_VARIANT = "embedserve-int8"
INFINITY_OPTIMUM = "infinity-optimum"


def find_cell(results: dict[str, Any], server: str, mode: str, mix: str, per_request: int, load: float) -> Any:
    """The cell of a server with this shape (``load``: concurrency when closed, rate when open), or None."""
    key = "concurrency" if mode == "closed" else "rate"
    for cell in results.get("servers", {}).get(server, {}).get("cells", []):
        if (cell["mode"], cell["mix"], cell["texts_per_request"]) == (mode, mix, per_request) and math.isclose(
            cell[key] or 0.0, load
        ):
            return cell
    return None


def eps_c32(results: dict[str, Any], server: str) -> float | None:
    """Embeddings/s of a server with 32 single-text clients, mixed lengths."""
    cell = find_cell(results, server, "closed", "mixed", 1, 32)
    return None if cell is None else float(cell["embeddings_per_s"])


def p50_short(results: dict[str, Any], server: str) -> float | None:
    """p50 latency of a server at concurrency 1, one short input."""
    cell = find_cell(results, server, "closed", "short", 1, 1)
    if cell is None or cell["latency_ms"]["p50"] is None:
        return None
    return float(cell["latency_ms"]["p50"])


def cpu_per_request_short(results: dict[str, Any], server: str) -> float | None:
    """CPU milliseconds of the server's processes per request at concurrency 1, one short input."""
    cell = find_cell(results, server, "closed", "short", 1, 1)
    value = None if cell is None else cell.get("server_cpu_ms_per_request")
    return None if value is None else float(value)


def torch_server(results: dict[str, Any]) -> str:
    """The variant that runs embedserve's torch engine in this run's results."""
    return TORCH_VARIANT if results.get("servers", {}).get(TORCH_VARIANT, {}).get("cells") else "embedserve"


def target_row(name: str, measured: str, required: str, met: bool | None, value: float | None) -> dict[str, Any]:
    """One target: what it is, the measured and required values as text, met (None: reported only, or not
    measured), and the measured number."""
    return {"target": name, "measured": measured, "required": required, "met": met, "value": value}


def _ratio_target(name: str, num: float | None, den: float | None, bound: float, higher: bool, unit: str) -> Any:
    sign = ">=" if higher else "<="
    required = f"{sign} {bound:g}x"
    if num is None or den is None or den == 0:
        return target_row(name, "not measured", required, None, None)
    ratio = num / den
    met = ratio >= bound if higher else ratio <= bound
    return target_row(name, f"{ratio:.2f}x ({num:.1f} vs {den:.1f} {unit})", required, met, ratio)


def _below_target(name: str, mine: float | None, theirs: float | None) -> dict[str, Any]:
    if mine is None or theirs is None:
        return target_row(name, "not measured", "< 1x", None, None)
    measured = f"{mine:.2f} ms vs {theirs:.2f} ms ({mine / theirs:.2f}x)"
    return target_row(name, measured, "< 1x", mine < theirs, mine / theirs)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issues with its measured value, the required value and whether it is met."""
    return [*_torch_targets(results), *_token_targets(results), _rss_target(results), *engine_targets(results)]


def torch_ceiling(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The in-process ceiling of what the torch engine runs: the TorchScript trace (``torch-script``) where the run
    measured it (a CPU, since ``--torchscript``), else eager torch, the reference."""
    traced = results.get("ceilings", {}).get("torch-script", {})
    if traced.get("mixes"):  # empty where the engine was skipped (a GPU ceiling)
        return "torch-script", traced
    return "torch", results.get("ceiling", {})


def _torch_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    name, ceiling = torch_ceiling(results)
    ceiling_best = ceiling.get("mixes", {}).get("mixed", {}).get("best_texts_per_s")
    direct = ceiling.get("direct", {}).get("p50_ms")
    server = torch_server(results)
    label = "embedserve --engine torch" if server == TORCH_VARIANT else "embedserve"
    es, es_p50 = eps_c32(results, server), p50_short(results, server)
    c32, c1 = f"c=32 single mixed: {label}", f"c=1 single short: {label}"
    return [
        _ratio_target(f"{c32} emb/s vs its ceiling's ({name}) best texts/s", es, ceiling_best, 0.85, True, "/s"),
        _ratio_target(f"{c32} emb/s vs naive server", es, eps_c32(results, "naive"), 1.5, True, "/s"),
        _ratio_target(f"{c32} emb/s vs Infinity", es, eps_c32(results, "infinity"), 1.2, True, "/s"),
        _ratio_target(f"{c1} p50 vs one direct forward pass ({name})", es_p50, direct, 1.3, False, "ms"),
        _below_target(f"{c1} p50 below Infinity's", es_p50, p50_short(results, "infinity")),
    ]


def _rss_target(results: dict[str, Any]) -> dict[str, Any]:
    return rss_row("RSS bounded under 10x overload", results.get("overload"))


def rss_row(name: str, overload: dict[str, Any] | None) -> dict[str, Any]:
    """The RSS verdict of an overload phase (``runner.rss_verdict``'s fields) as a target."""
    if overload is None:
        return target_row(name, "not measured", "bounded", None, None)
    growth = overload["rss_growth_mib"]
    measured = (
        f"middle third {overload['rss_middle_third_mib']:.0f} -> last third "
        f"{overload['rss_last_third_mib']:.0f} MiB ({growth:+.0f} MiB), 429 rate {100 * overload['rate_429']:.0f}%"
    )
    required = f"growth <= {overload['rss_growth_allowed_mib']:.0f} MiB"
    return target_row(name, measured, required, bool(overload["rss_bounded"]), growth)


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


def engine_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The engines' targets: embedserve with its default flags against the fastest near-lossless ceiling and
    Infinity's optimum engine; CPU per request at concurrency 1; int8 against the torch engine."""
    choice = results.get("ceiling_choice") or {}
    engine = choice.get("engine", "?")
    es, es_p50 = eps_c32(results, "embedserve"), p50_short(results, "embedserve")
    ceiling = f"near-lossless ceiling ({engine})"
    return [
        _ratio_target(
            f"c=32 single mixed: embedserve emb/s vs best texts/s of the {ceiling}",
            es,
            choice.get("best_texts_per_s"),
            0.9,
            True,
            "/s",
        ),
        _ratio_target(
            "c=32 single mixed: embedserve emb/s vs Infinity-optimum",
            es,
            eps_c32(results, INFINITY_OPTIMUM),
            1.3,
            True,
            "/s",
        ),
        _ratio_target(
            f"c=1 single short: embedserve p50 vs single-input time of the {ceiling}",
            es_p50,
            choice.get("direct_p50_ms"),
            1.3,
            False,
            "ms",
        ),
        _below_target(
            "c=1 single short: embedserve p50 below Infinity-optimum's", es_p50, p50_short(results, INFINITY_OPTIMUM)
        ),
        _cpu_target(results),
        _int8_target(results),
    ]


def _cpu_target(results: dict[str, Any]) -> dict[str, Any]:
    name = "c=1 single short: embedserve server CPU per request"
    mine = cpu_per_request_short(results, "embedserve")
    if mine is None:
        return target_row(name, "not measured", "reported", None, None)
    others = [
        f"{server} {value:.2f} ms"
        for server in (TORCH_VARIANT, INFINITY_OPTIMUM, "infinity")
        if (value := cpu_per_request_short(results, server)) is not None
    ]
    beside = f" (beside: {', '.join(others)})" if others else ""
    return target_row(name, f"{mine:.2f} ms{beside}", "reported", None, mine)


def agreement_note(results: dict[str, Any]) -> str:
    """int8's agreement with torch float32: the server's vectors and the in-process onnx-int8 ceiling's."""
    parts = []
    server = results.get("servers", {}).get(INT8_VARIANT, {}).get("agreement")
    if server:
        parts.append(f"server mean cosine {server['mean_cosine']:.4f}, min {server['min_cosine']:.4f}")
    ceiling = results.get("ceilings", {}).get("onnx-int8", {}).get("agreement")
    if ceiling:
        parts.append(f"in-process onnx-int8 mean {ceiling['mean_cosine']:.4f}, min {ceiling['min_cosine']:.4f}")
    return "; ".join(parts)


def _int8_target(results: dict[str, Any]) -> dict[str, Any]:
    target = _ratio_target(
        "c=32 single mixed: embedserve --quantize int8 emb/s vs --engine torch",
        eps_c32(results, INT8_VARIANT),
        eps_c32(results, TORCH_VARIANT),
        2.0,
        True,
        "/s",
    )
    note = agreement_note(results)
    if note:
        target["measured"] += f"; agreement to torch fp32: {note}"
    return target
