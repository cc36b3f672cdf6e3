"""Engines: turning model settings into a loaded model the core can run.

Each engine lives in its own module and is imported only when a model needs it, so importing the server imports no
inference runtime. What a model is (kind, pooling, limits) is decided once, in :mod:`embedserve.engines.describe`,
for every engine; :mod:`embedserve.engines.base` holds the types the core receives. Engines never import the core
or the HTTP layer.

``--engine auto`` serves with torch on CUDA. On a CPU it takes OpenVINO, else ONNX Runtime (``--quantize int8``:
ONNX Runtime), the order measured fastest on the CPUs we benchmark (see the README); a model whose graph cannot be
exported or run there falls back to torch, with a warning naming why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedserve import logs
from embedserve.engines.base import InferenceModel, ModelInfo
from embedserve.engines.cache import default_cache_dir
from embedserve.engines.modelfiles import BUNDLED_DEFAULT_PACKAGE
from embedserve.errors import ModelLoadError
from embedserve.hardware import available_cores
from embedserve.settings import DEFAULT_MODEL_ID, ModelSettings

if TYPE_CHECKING:
    from embedserve.engines.describe import ModelDescription

log = logging.getLogger("embedserve.engines")

OPENMP_SPIN_COUNT = "10000"
"""How long torch's OpenMP workers (GNU libgomp) spin-wait for the next parallel region before they sleep, in spin
iterations: tens of microseconds, which covers the gaps between the operations of one forward pass. libgomp's
default, 300,000, keeps them spinning for milliseconds after every pass, on the cores the event loop needs to send
the answer and read the next request: at concurrency 1 on 2 cores the torch engine used 1.91 cores, and 1.69 with
this count, for 99.1 instead of 93.7 short requests/s (means of three alternating 10 s runs). Set before torch is
first imported, unless ``GOMP_SPINCOUNT`` is already set."""


def load(spec: ModelSettings) -> tuple[ModelInfo, InferenceModel]:
    """Load the model ``spec`` names (fetching its files if needed). Raises ModelLoadError naming what is wrong."""
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)  # read once, when torch loads libgomp
    from embedserve.engines.describe import describe  # transformers (which imports torch) only once a model loads

    engine = choose_engine(spec)
    options: dict[str, Any] = {
        "threads": spec.intra_op_threads or available_cores(),
        "cache_root": Path(spec.engine_cache_dir).expanduser() if spec.engine_cache_dir else default_cache_dir(),
    }
    chosen = f"{engine} (--engine auto)" if spec.engine == "auto" else engine
    with logs.step(log, "loading model %s with %s on %s", spec.model_id, chosen, _device(spec, engine)):
        if _on_the_hub(spec):
            with logs.step(log, "fetching %s from the Hugging Face hub (or its cache)", spec.model_id):
                desc = describe(spec)
        else:
            desc = describe(spec)
        if desc.kind == "multimodal" and engine != "torch":
            if spec.engine != "auto":
                raise ModelLoadError(f"--engine {engine} cannot serve a multimodal model (two towers, images); use "
                                     "--engine torch or auto")  # fmt: skip
            engine = "torch"  # only torch runs both towers
        if spec.engine != "auto" or engine == "torch":
            return _load(engine, desc, spec, options)
        try:
            return _load(engine, desc, spec, options)
        except Exception as exc:  # an export, a graph or a compile that fails: auto still serves the model
            log.warning("%s cannot serve %s (%s: %s); serving it with torch", engine, spec.model_id,
                        type(exc).__name__, exc)  # fmt: skip
            return _load("torch", desc, spec, options)


def _device(spec: ModelSettings, engine: str) -> str:
    """The device a model will run on, for the log line that starts loading it."""
    if engine != "torch":
        return "cpu"
    if spec.device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    return spec.device


def _on_the_hub(spec: ModelSettings) -> bool:
    """Whether the model's files come from the hub (or its cache): neither a directory nor the bundled default."""
    if Path(spec.model_id).expanduser().is_dir() or spec.model_id.startswith((".", "/", "~")):
        return False
    bundled = spec.model_id == DEFAULT_MODEL_ID and spec.revision is None
    return not (bundled and importlib.util.find_spec(BUNDLED_DEFAULT_PACKAGE) is not None)


def choose_engine(spec: ModelSettings) -> str:
    """The engine ``--engine auto`` stands for with these settings on this machine; an explicit engine as is."""
    if spec.engine != "auto":
        return spec.engine
    if spec.quantize is not None:
        return "onnx"
    if spec.device.startswith("cuda") or (spec.device == "auto" and _cuda_available()):
        return "torch"
    for engine, module in (("openvino", "openvino"), ("onnx", "onnxruntime")):
        if importlib.util.find_spec(module) is not None:
            return engine
    return "torch"


def _cuda_available() -> bool:
    import torch  # only to ask whether there is a GPU

    return bool(torch.cuda.is_available())


def _load(
    engine: str, desc: ModelDescription, spec: ModelSettings, options: dict[str, Any]
) -> tuple[ModelInfo, InferenceModel]:
    if engine == "onnx":
        from embedserve.engines import onnx

        return onnx.load(desc, spec, **options)
    if engine == "openvino":
        from embedserve.engines import openvino

        return openvino.load(desc, spec, **options)
    from embedserve.engines import torch as torch_engine  # torch lives behind this import

    return torch_engine.load(desc, spec, **options)
