"""Dual encoders (CLIP and the like): texts through the text tower, images through the vision tower, each into the
shared projection space (``get_text_features`` / ``get_image_features``). Normalization is the core's, as for every
dense model, so ``normalize: false`` returns the raw projections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embedserve.engines.torch.runner import Prepared, Runner
from embedserve.engines.warmup import ForwardCost


class ImageBatch:
    """A prepared batch of images: pixel values on the device."""

    __slots__ = ("pixels",)

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels


class DualEncoderRunner(Runner):
    """A transformers dual encoder; ``processor`` is the model's own image processor (Pillow and numpy)."""

    def __init__(self, model: Any, *, processor: Any, **common: Any) -> None:
        super().__init__(model, **common)
        self.processor = processor
        self.dtype = next(model.parameters()).dtype

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        """Projected text features, (inputs, projection) float32."""
        return self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.float()  # type: ignore[no-any-return]

    def compute(self, prepared: Prepared | ImageBatch) -> torch.Tensor:
        """Projected image features for an image batch; text features otherwise."""
        if isinstance(prepared, ImageBatch):
            return self.model.get_image_features(pixel_values=prepared.pixels).pooler_output.float()  # type: ignore[no-any-return]
        return super().compute(prepared)

    def preprocess_images(self, images: Sequence[Any]) -> list[Any]:
        """Resize, crop and normalize as the model's image processor does; one float32 array per image."""
        if not images:
            return []
        arrays = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return list(arrays.astype(np.float32, copy=False))

    def prepare_images(self, pixels: Sequence[Any]) -> ImageBatch:
        """Stack into one tensor on the device, in the model's precision."""
        tensor = torch.from_numpy(np.stack(pixels))
        if self.cuda:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return ImageBatch(tensor.to(self.dtype))

    def warmup(self, max_batch_tokens: int) -> ForwardCost:
        """The text tower's cost (what the packer and admission start from), after one image batch has run so that
        the vision tower's first call is paid at start-up too."""
        size = self.processor.crop_size or self.processor.size
        height, width = int(size.get("height", 224)), int(size.get("width", 224))
        blank = np.zeros((3, height, width), dtype=np.float32)
        self.finish(self.launch(self.prepare_images([blank])))
        return super().warmup(max_batch_tokens)
