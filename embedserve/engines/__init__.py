"""Engines: turning model settings into a loaded model the core can run.

Each engine lives in its own subpackage and is imported only when a model needs it, so importing the server imports
no inference runtime. What a model is (kind, pooling, limits) is decided once, in :mod:`embedserve.engines.describe`,
for every engine; :mod:`embedserve.engines.base` holds the types the core receives. Engines never import the core
or the HTTP layer.
"""

from __future__ import annotations

from embedserve.engines.base import InferenceModel, ModelInfo
from embedserve.settings import ModelSettings


def load(spec: ModelSettings) -> tuple[ModelInfo, InferenceModel]:
    """Load the model ``spec`` names (fetching its files if needed). Raises ModelLoadError naming what is wrong."""
    from embedserve.engines import torch as torch_engine  # torch lives behind this import

    return torch_engine.load(spec)
