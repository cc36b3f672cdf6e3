"""The embedding cache's costs and gains (issue 13), against embedserve served in this process.

``python -m benchmarks.cache miss-cost`` answers "does the cache cost anything on a miss?" two ways:

* in-process: :meth:`EmbeddingCache.lookup` on inputs it has never seen, with a ``compute`` that returns at once, minus
  the same ``compute`` called directly: the cache's own work per missed input (keys, lookups, the flight, the copy
  and the LRU insert, evictions included once the cache is full);
* end to end: two servers of the same model, one with the default cache and one with ``--cache-bytes 0``, sent the
  same sequence of never-repeated requests, one at a time and interleaved, so both see the same machine noise; the
  medians of their latencies and the difference.

``python -m benchmarks.cache hit-rates`` sends closed-loop traffic in which 0%, 50% and 95% of the inputs repeat
earlier ones and reports inputs per second and the median request latency for each (``--seconds`` per rate).

Both print a small table and write ``cache_miss_cost`` or ``cache_hit_rates`` ``.json``, ``.md`` (with the hardware
and the date) and ``.png`` into ``--out`` (default ``benchmarks/results``); ``--report-only`` re-renders the .md and
.png from the .json. Run them on an otherwise idle machine: every figure here is a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from benchmarks.cli import DEFAULT_OUT, require
from benchmarks.report import figure, machine_line, md_table, num, write_standalone
from embedserve.core.cache import Entry, LocalCache, input_key
from embedserve.core.embedding_cache import EmbeddingCache
from embedserve.http.app import create_app
from embedserve.settings import CacheSettings, EdgeSettings, ModelSettings, Settings

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly",
         "box", "jolly", "vexing", "nymphs"]  # fmt: skip


def sentence(rng: random.Random, serial: int, words: int = 12) -> str:
    """A sentence no other call returns (it carries ``serial``)."""
    return f"{serial} " + " ".join(rng.choices(WORDS, k=words))


def lookup_overhead(inputs: int = 20_000, per_request: int = 8, cache_bytes: int = 4 * 2**20) -> dict[str, float]:
    """Microseconds per missed input that the cache itself adds (keys, lookups, flights, copy, insert, eviction)."""
    rng = random.Random(1)
    row = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    scope = b"s" * 32
    texts = [sentence(rng, i) for i in range(inputs)]
    requests = [texts[i : i + per_request] for i in range(0, inputs, per_request)]

    async def compute(indices: list[int]) -> list[Entry]:
        return [Entry(row, 10) for _ in indices]

    async def direct() -> float:
        t0 = time.perf_counter()
        for batch in requests:
            await compute(list(range(len(batch))))
        return time.perf_counter() - t0

    async def cached() -> float:
        cache = EmbeddingCache(LocalCache(cache_bytes))  # small: it fills, so evictions are part of the cost
        t0 = time.perf_counter()
        for batch in requests:
            keys = [input_key(scope, text, truncate=True, direction="right") for text in batch]
            await cache.lookup("m", keys, lambda ix: _copied(compute, ix))
        return time.perf_counter() - t0

    plain = min(asyncio.run(direct()) for _ in range(3))
    with_cache = min(asyncio.run(cached()) for _ in range(3))
    return {"inputs": inputs, "us_per_input": (with_cache - plain) / inputs * 1e6}


async def _copied(compute: Any, indices: list[int]) -> list[Entry]:
    # What the server does with a computed row: the entry owns a copy (see Entry.of).
    return [Entry.of(entry.vector, entry.tokens) for entry in await compute(indices)]


@contextlib.contextmanager
def serving(model: ModelSettings, cache: CacheSettings) -> Iterator[str]:
    """One embedserve app under uvicorn on a free loopback port, in a thread; yields its URL once ready."""
    settings = Settings(edge=EdgeSettings(rate_limit_rps=0), cache=cache, models=(model,))
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            for _ in range(6000):
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        break
                time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def miss_latency(model: ModelSettings, requests: int, inputs: int) -> dict[str, float]:
    """Median latency of never-repeated requests of ``inputs`` texts, cache on (default) vs off, interleaved."""
    rng = random.Random(2)
    on: list[float] = []
    off: list[float] = []
    with (
        serving(model, CacheSettings()) as url_on,
        serving(model, CacheSettings(cache_bytes=0)) as url_off,
        httpx.Client(base_url=url_on, timeout=60) as c_on,
        httpx.Client(base_url=url_off, timeout=60) as c_off,
    ):
        serial = 0
        for i in range(requests + 20):
            pair = [(c_on, on), (c_off, off)]
            for client, times in pair if i % 2 else pair[::-1]:  # alternate who goes first
                texts = [sentence(rng, serial + k) for k in range(inputs)]
                serial += inputs
                t0 = time.perf_counter()
                response = client.post("/embed", json={"inputs": texts})
                elapsed = time.perf_counter() - t0
                assert response.status_code == 200, response.text
                if i >= 20:  # the first requests warm both servers
                    times.append(elapsed)
    p50_on, p50_off = statistics.median(on), statistics.median(off)
    return {"inputs": inputs, "requests": requests, "p50_on_ms": p50_on * 1e3, "p50_off_ms": p50_off * 1e3,
            "difference_ms": (p50_on - p50_off) * 1e3}  # fmt: skip


def hit_rates(model: ModelSettings, seconds: float, concurrency: int, inputs: int) -> list[dict[str, float]]:
    """Closed-loop traffic at 0%, 50% and 95% repeated inputs: inputs per second and the median request latency."""
    rows = []
    for rate in (0.0, 0.5, 0.95):
        with serving(model, CacheSettings()) as url:
            rows.append(asyncio.run(_closed_loop(url, rate, seconds, concurrency, inputs)) | {"hit_rate": rate})
    return rows


async def _closed_loop(url: str, rate: float, seconds: float, concurrency: int, inputs: int) -> dict[str, float]:
    rng = random.Random(3)
    seen = [sentence(rng, -i) for i in range(1, 201)]
    serial = 0
    latencies: list[float] = []
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await client.post("/embed", json={"inputs": seen[:32]})
        await client.post("/embed", json={"inputs": seen[32:64]})
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal serial, done
            while time.perf_counter() < end:
                texts = []
                for _ in range(inputs):
                    if rng.random() < rate:
                        texts.append(rng.choice(seen[:64]))
                    else:
                        serial += 1
                        texts.append(sentence(rng, serial))
                t0 = time.perf_counter()
                response = await client.post("/embed", json={"inputs": texts})
                latencies.append(time.perf_counter() - t0)
                assert response.status_code == 200, response.text
                done += inputs

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"inputs_per_second": done / elapsed, "p50_ms": statistics.median(latencies) * 1e3}


def markdown(results: dict[str, Any]) -> str:
    """cache_miss_cost.md's or cache_hit_rates.md's text."""
    lines = [
        "# The embedding cache: " + ("its cost on a miss" if "end_to_end" in results else "inputs/s per hit rate"),
        "",
        f"- date: {results['date']}, command: `{results['command']}`",
        f"- hardware: {machine_line(results['hardware'])}; servers (in this process) and clients on the same cores",
        f"- model: {results['model']}, engine {results['engine']}",
        "",
    ]
    if "end_to_end" in results:
        lines += [
            f"Cache work per missed input, in process: {num(results['lookup']['us_per_input'])} us "
            f"({results['lookup']['inputs']} inputs).",
            "",
            *md_table(
                ["new inputs per request", "requests", "p50 cache on (ms)", "p50 cache off (ms)", "difference (ms)"],
                [[str(r["inputs"]), str(r["requests"]), num(r["p50_on_ms"], 2), num(r["p50_off_ms"], 2),
                  num(r["difference_ms"], 2)] for r in results["end_to_end"]],
            ),
        ]  # fmt: skip
    else:
        lines += [
            f"{results['concurrency']} closed-loop clients, {results['inputs']} inputs per request, "
            f"{results['seconds']:g} s per hit rate.",
            "",
            *md_table(
                ["repeated inputs", "inputs/s", "p50 (ms)"],
                [
                    [f"{r['hit_rate']:.0%}", num(r["inputs_per_second"], 0), num(r["p50_ms"])]
                    for r in results["hit_rates"]
                ],
            ),
        ]
    stem = "cache_miss_cost" if "end_to_end" in results else "cache_hit_rates"
    return "\n".join([*lines, "", f"![plot]({stem}.png)", ""])


def plot(results: dict[str, Any], path: Path) -> None:
    """Miss cost: p50 with the cache on and off per request size. Hit rates: inputs/s and p50 per hit rate."""
    with figure(path, cols=2, size=(10, 4)) as axes:
        left, right = axes[0]
        if "end_to_end" in results:
            for ax, row in zip((left, right), results["end_to_end"], strict=False):
                bars = ax.bar(["cache on", "cache off"], [row["p50_on_ms"] or 0.0, row["p50_off_ms"] or 0.0],
                              color=["tab:blue", "tab:gray"])  # fmt: skip
                ax.bar_label(bars, fmt="%.2f", fontsize=8)
                ax.set_ylabel("p50 latency (ms)")
                ax.set_title(f"{row['inputs']} never-seen inputs per request")
        else:
            labels = [f"{r['hit_rate']:.0%}" for r in results["hit_rates"]]
            for ax, key, label in ((left, "inputs_per_second", "inputs/s"), (right, "p50_ms", "p50 latency (ms)")):
                bars = ax.bar(labels, [r[key] or 0.0 for r in results["hit_rates"]], color="tab:blue")
                ax.bar_label(bars, fmt="%.0f" if key == "inputs_per_second" else "%.1f", fontsize=8)
                ax.set_xlabel("repeated inputs")
                ax.set_ylabel(label)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["miss-cost", "hit-rates"])
    parser.add_argument("--model-id", default=None, help="model to serve (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--requests", type=int, default=300, help="miss-cost: requests per server and shape")
    parser.add_argument("--seconds", type=float, default=20.0, help="hit-rates: seconds per hit rate")
    parser.add_argument("--concurrency", type=int, default=8, help="hit-rates: clients sending at once")
    parser.add_argument("--inputs", type=int, default=8, help="hit-rates: inputs per request")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--report-only", action="store_true", help="re-render the .md and .png from the .json")
    args = parser.parse_args(argv)
    require("python -m benchmarks.cache", *(() if args.report_only else ("psutil",)), "matplotlib")
    out, stem = args.out.resolve(), f"cache_{args.what.replace('-', '_')}"
    if args.report_only:
        result = json.loads((out / f"{stem}.json").read_text())
        sys.stdout.write(f"wrote {write_standalone(out, stem, result, markdown, plot)}\n")
        return
    from benchmarks.runner import hardware

    model = ModelSettings(engine=args.engine, **({"model_id": args.model_id} if args.model_id else {}))
    result: dict[str, Any]
    if args.what == "miss-cost":
        result = {"lookup": lookup_overhead(), "end_to_end": [miss_latency(model, args.requests, n) for n in (1, 32)]}
        sys.stdout.write(f"cache work per missed input, in process: {result['lookup']['us_per_input']:.1f} us\n")
        for row in result["end_to_end"]:
            sys.stdout.write(f"{row['inputs']:>3} new inputs per request: p50 {row['p50_on_ms']:.2f} ms cache on, "
                             f"{row['p50_off_ms']:.2f} ms off ({row['difference_ms']:+.2f} ms)\n")  # fmt: skip
    else:
        result = {"hit_rates": hit_rates(model, args.seconds, args.concurrency, args.inputs)}
        for row in result["hit_rates"]:
            sys.stdout.write(
                f"{row['hit_rate']:>4.0%} hits: {row['inputs_per_second']:.0f} inputs/s, p50 {row['p50_ms']:.1f} ms\n"
            )
    command = "python -m benchmarks.cache " + " ".join(sys.argv[1:] if argv is None else argv)
    header = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command.strip(),
              "hardware": hardware(), "model": model.model_id, "engine": args.engine}  # fmt: skip
    if args.what == "hit-rates":
        header |= {"seconds": args.seconds, "concurrency": args.concurrency, "inputs": args.inputs}
    sys.stdout.write(f"wrote {write_standalone(out, stem, header | result, markdown, plot)}\n")


if __name__ == "__main__":
    main()
