"""The ONNX Runtime engine (CPU): the model's ONNX graph with transformer fusions, optionally dynamic int8.

Graphs come from :mod:`.graphs` (shipped, or exported once and cached); :mod:`.optimize` fuses them where the
architecture allows and quantizes them for ``--quantize int8``. The session runs on the model's backend thread with
one intra-op thread per available core, spinning only while a run lasts, so an idle server burns no CPU between
requests.
ONNX Runtime has no bfloat16 CPU kernels for these graphs: bfloat16 is the torch and OpenVINO engines' business.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort

from embedserve.engines.agreement import LazyRun, batch_run
from embedserve.engines.arrays import ArrayRunner, architecture, runner_settings
from embedserve.engines.base import ModelInfo
from embedserve.engines.describe import ModelDescription
from embedserve.engines.onnx.graphs import fp32_graph
from embedserve.engines.onnx.optimize import fusable, optimize, quantize_int8
from embedserve.engines.precision import cached_agreement
from embedserve.errors import ModelLoadError
from embedserve.settings import ModelSettings

log = logging.getLogger("embedserve.engines.onnx")


class OrtRunner(ArrayRunner):
    """An ONNX Runtime session behind the shared padding and pooling."""

    def __init__(self, session: ort.InferenceSession, output_name: str, **common: Any) -> None:
        super().__init__(input_names=[i.name for i in session.get_inputs()], **common)
        self.session = session
        self.output_name = output_name

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output for one batch."""
        out: np.ndarray = self.session.run([self.output_name], feeds)[0]
        return out


def session(path: Any, threads: int) -> ort.InferenceSession:
    """A CPU session: all graph optimizations, ``threads`` intra-op threads, no spinning between runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Workers spin between the operators of a run (without it every operator pays a sleep and a wake-up: int8 MiniLM
    # took 1.7 instead of 1.4 ms a pass) but stop the moment a run returns: spinning on after each run, as by
    # default, cost 45 ms of CPU per request at 10 sparse requests/s (0.43 cores for almost no work); this costs 5.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load(desc: ModelDescription, spec: ModelSettings, *, threads: int, cache_root: Any) -> tuple[ModelInfo, OrtRunner]:
    """Load ``desc`` into ONNX Runtime on the CPU."""
    if spec.dtype not in ("auto", "float32"):
        raise ModelLoadError(
            f"--engine onnx runs float32 (or int8 with --quantize int8), not {spec.dtype}; use --engine openvino or "
            "torch for bfloat16"
        )
    if spec.quantize is not None and desc.kind not in ("embedding", "sparse"):
        raise ModelLoadError(f"--quantize int8 serves embedding and sparse models, not a {desc.kind} model")
    graph = fp32_graph(desc, cache_root)
    path = graph.path
    if fusable(desc.config):
        source = graph.path
        try:
            path = graph.cache.get("model.optimized.onnx", lambda t: optimize(source, t, desc.config), "fused graph")
        except Exception as exc:  # a shipped graph the optimizer does not understand still runs unfused
            log.warning("ONNX Runtime's optimizer cannot fuse %s (%s); running it unfused", source, exc)
    common = runner_settings(desc)
    found = None
    if spec.quantize == "int8":
        fp32_path = path
        quantized = graph.cache.get("model.int8.onnx", lambda target: quantize_int8(fp32_path, target), "int8 graph")
        runner = OrtRunner(session(quantized, threads), graph.output, **common)
        found = cached_agreement(
            graph.cache, engine="onnx", form="int8", library=ort.__version__, desc=desc,
            reference=LazyRun(lambda: OrtRunner(session(fp32_path, threads), graph.output, **common)),
            candidate=batch_run(runner),
        )  # fmt: skip
    else:
        runner = OrtRunner(session(path, threads), graph.output, **common)
    info = desc.info(
        architecture=architecture(desc),
        dtype="float32",
        device="cpu",
        engine="onnx",
        quantize=spec.quantize,
        agreement=found,
    )
    return info, runner
