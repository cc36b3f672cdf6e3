"""The OpenVINO engine (CPU): the same ONNX graph as ONNX Runtime's, compiled by OpenVINO for this CPU.

OpenVINO reads the fp32 ONNX graph directly (not ONNX Runtime's fused one, whose contrib operators it does not
know) and compiles it with an explicit inference precision: float32, or bfloat16 where ``--dtype`` asks for it (see
:mod:`embedserve.engines.precision`). Compiled blobs are cached beside the graph, so later starts skip compilation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import openvino as ov

from embedserve.engines.agreement import LazyRun, batch_run
from embedserve.engines.arrays import ArrayRunner, Padded, architecture, runner_settings
from embedserve.engines.base import ModelInfo
from embedserve.engines.describe import ModelDescription
from embedserve.engines.onnx.graphs import Graph, fp32_graph
from embedserve.engines.precision import cached_agreement, pick_bf16, wants_bf16
from embedserve.engines.warmup import ForwardCost, uniform_batch
from embedserve.errors import ModelLoadError
from embedserve.settings import ModelSettings

log = logging.getLogger("embedserve.engines.openvino")

_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}

LENGTH_MULTIPLE = 8
"""Batches are padded to a multiple of 8 tokens. OpenVINO compiles kernels for each input shape it meets and keeps
them in a cache (:data:`KERNEL_CACHE_SHAPES`); a batch of a shape it has not kept pays for compiling them again.
Replaying the batches a 32-client run of mixed lengths formed (220 shapes in 365 batches) ran at 143 inputs/s with 64
shapes kept and 168 with every shape kept. Lengths in steps of 8 leave at most 32 lengths up to 256 tokens, so the
shapes a traffic mix forms fit in the cache, for about 4% more padding on texts of 80 tokens: 32 clients got 152
emb/s against 140 with exact lengths and 64 shapes kept (three 20 s runs each, alternating, 2-core EPYC)."""

KERNEL_CACHE_SHAPES = 512
"""Input shapes whose compiled kernels OpenVINO keeps (CPU_RUNTIME_CACHE_CAPACITY; its default, 5000, let RSS grow
past 1 GiB under varied traffic with exact lengths). Each kept shape costs about 0.4 MiB: at most about 200 MiB."""


PARALLEL_PASS_TOKENS = 2048
"""The largest batch (inputs x padded length) a parallel pass takes; a larger one computes alone, on every thread.
Large batches gain little from streams (each operator's work dwarfs the threads' wait for each other), and each
stream keeps scratch memory for the largest shape it has run: warming both streams up with a full 32 x 256-token
batch of all-MiniLM-L6-v2 took 580 MiB more, and 4.5 s."""

EXPRESS_THREADS = 1
"""Threads of the express lane's copy of the model (a second compiled model: one compiled model computes one
request at a time, so a second infer request on it waited for the first). In-process on 2 cores, MiniLM, a 9-token
query took 5.3 ms (p50; 8.8 at most) on it while the main copy computed 16 x 128-token batches back to back, against
134 ms waiting on the same compiled model; the batches took 150 ms instead of 147."""


class OpenVinoRunner(ArrayRunner):
    """A compiled OpenVINO model behind the shared padding and pooling; one infer request, reused. With ``streams``
    (the same graph compiled for several streams of fewer threads each) it is also a
    :class:`~embedserve.engines.base.ParallelModel`: one infer request per stream, started asynchronously."""

    most_tokens = PARALLEL_PASS_TOKENS

    def __init__(self, compiled: Any, output_name: str, precision: str, **common: Any) -> None:
        super().__init__(input_names=[port.get_any_name() for port in compiled.inputs], **common)
        self.precision = precision
        self.request = compiled.create_infer_request()
        self.port = compiled.output(output_name)
        self._free: list[Any] = []
        self._stream_port: Any = None
        self.passes = 1

    def use_streams(self, streams: Any, output_name: str) -> None:
        """Compute parallel passes on ``streams``, the graph compiled for several streams (one request each)."""
        self._free = [streams.create_infer_request() for _ in range(streams_of(streams))]
        self._stream_port = streams.output(output_name)
        self.passes = len(self._free)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output for one batch, copied out of the request's buffer (the next run reuses it)."""
        return np.array(self.request.infer(feeds)[self.port], copy=True)

    def start(self, prepared: Padded, landed: Callable[[], None]) -> tuple[Any, Padded]:
        """Start a pass on a free stream; ``landed`` runs on OpenVINO's thread when it ends."""
        request = self._free.pop()
        request.set_callback(lambda _: landed(), None)
        try:
            request.start_async(prepared.feeds)
        except BaseException:
            self._free.append(request)
            raise
        return request, prepared

    def collect(self, started: tuple[Any, Padded]) -> Iterable[Any]:
        """The pooled results of a started pass; its stream is free again."""
        request, prepared = started
        try:
            request.wait()  # raises what the pass raised
            out = np.array(request.get_tensor(self._stream_port).data, copy=True)
        finally:
            self._free.append(request)
        return self.finish((out, prepared))

    def warmup(self, max_batch_tokens: int) -> ForwardCost:
        """As every engine's, then the largest batch a parallel pass takes once on each stream (each keeps its own
        scratch memory for the largest shape it has run)."""
        cost = super().warmup(max_batch_tokens)
        tokens = min(max_batch_tokens, self.most_tokens)
        largest = self.prepare(uniform_batch(self.pad_id, min(self.max_len, tokens), tokens))
        for request in self._free:
            request.infer(largest.feeds)
        return cost


def compile_graph(graph: Graph, precision: str, threads: int, streams: int | None = 1) -> Any:
    """Compile for the CPU with ``threads`` threads and the given inference precision: one stream with the latency
    hint, or several streams sharing the threads with the throughput hint (``streams`` None: as many as OpenVINO
    picks for this CPU)."""
    core = ov.Core()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": _PRECISIONS[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        "CACHE_DIR": str(graph.cache.dir / "openvino"),
        "CPU_RUNTIME_CACHE_CAPACITY": KERNEL_CACHE_SHAPES,
    }
    if streams is not None:
        config["NUM_STREAMS"] = streams
    return core.compile_model(str(graph.path), "CPU", config)


def streams_of(compiled: Any) -> int:
    """How many streams a compiled model has."""
    return int(compiled.get_property("NUM_STREAMS"))


def parallel_copy(graph: Graph, precision: str, threads: int, passes: int | None, kind: str) -> Any:
    """The streams copy for parallel passes, or None: with one thread, ``--parallel-passes 1``, a SPLADE model
    (its large batches run in slices of inputs, one after another), or where OpenVINO picks one stream."""
    if threads < 2 or passes == 1 or kind == "sparse":
        return None
    compiled = compile_graph(graph, precision, threads, passes)
    return compiled if streams_of(compiled) > 1 else None


def load(desc: ModelDescription, spec: ModelSettings, *, threads: int, cache_root: Path) -> tuple[ModelInfo, Any]:
    """Load ``desc`` into OpenVINO on the CPU in float32 or bfloat16."""
    if spec.quantize is not None:
        raise ModelLoadError("--quantize int8 runs on --engine onnx (or auto), not openvino")
    if spec.dtype not in ("auto", "float32", "bfloat16"):
        raise ModelLoadError(f"--engine openvino runs float32 or bfloat16 on a CPU, not {spec.dtype}")
    graph = fp32_graph(desc, cache_root)
    common = runner_settings(desc)

    def runner(precision: str) -> OpenVinoRunner:
        return OpenVinoRunner(
            compile_graph(graph, precision, threads), graph.output, precision, length_multiple=LENGTH_MULTIPLE, **common
        )

    found = None
    chosen: OpenVinoRunner | None = None
    if wants_bf16(spec.dtype, desc.kind):
        bf16 = runner("bfloat16")
        reference = LazyRun(lambda: runner("float32"))  # compiled only if the agreement has to be measured
        found = cached_agreement(
            graph.cache, engine="openvino", form="bfloat16", library=ov.get_version(), desc=desc,
            reference=reference, candidate=batch_run(bf16),
        )  # fmt: skip
        chosen = bf16 if pick_bf16(spec.dtype, found) else cast(OpenVinoRunner | None, reference.model)
    if chosen is None:
        chosen = runner("float32")
    streams = parallel_copy(graph, chosen.precision, threads, spec.parallel_passes, desc.kind)
    if streams is not None:
        chosen.use_streams(streams, graph.output)
    express_precision = chosen.precision
    chosen.express_factory = lambda: OpenVinoRunner(
        compile_graph(graph, express_precision, EXPRESS_THREADS), graph.output, express_precision,
        length_multiple=LENGTH_MULTIPLE, **common,
    )  # fmt: skip
    dtype = "bfloat16" if chosen.precision == "bfloat16" else "float32"
    info = desc.info(
        architecture=architecture(desc), dtype=dtype, device="cpu", engine="openvino", agreement=found,
        length_multiple=chosen.length_multiple, passes=chosen.passes,
    )  # fmt: skip
    return info, chosen
