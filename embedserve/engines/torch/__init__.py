"""The torch engine: transformers models on CPU (float32) or CUDA (float16); the only package that imports torch.

Absolute imports keep ``import torch`` inside this package pointing at the real torch, not at this package.
"""

from embedserve.engines.torch.loader import load

__all__ = ["load"]
