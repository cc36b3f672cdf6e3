"""How large a batch may grow when the settings leave it open, and the largest one the packer can form."""

from __future__ import annotations

CPU_MAX_BATCH_REQUESTS = 32
"""--max-batch-requests when it is unset and the model runs on a CPU. Larger batches gain little there: on the 2-core
benchmark box every CPU engine's best batch of mixed or long texts held 4-16 inputs, and 64 short texts ran at most
10% faster than 32 (ONNX Runtime int8 5%, torch bfloat16 10%, the others not at all). The largest batch sets the
memory high-water mark: OpenVINO running MiniLM grew from 750 to 892 MiB for 32 x 256 tokens and to 1,127 MiB for
64 x 256, and kept it. Unset on a GPU, where only --max-batch-tokens bounds a batch."""


def largest_batch(max_tokens: int, max_requests: int | None, max_length: int) -> int:
    """Padded tokens of the largest batch the packer can form (the warm-up runs one: the memory high-water mark)."""
    return max_tokens if max_requests is None or not max_length else min(max_tokens, max_requests * max_length)
