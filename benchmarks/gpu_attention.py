"""Where a float16 forward pass of a bge-large-shaped model spends its time on a CUDA GPU: which attention backend
SDPA runs, what cuDNN's attention costs the first time it meets an input shape, and how much of a single-input pass
is kernel launches (the same pass replayed as a CUDA graph).

    python -m benchmarks make-bge-large-shape /tmp/bge
    python -m benchmarks.gpu_attention /tmp/bge > benchmarks/results/gpu/attention.txt

Its findings decided that embedserve turns cuDNN's attention off on CUDA (README, "On a GPU"). Its parts ran as two
scripts on a lent H200, their outputs in benchmarks/results/gpu/sdpa_shapes.txt and sdpa_backends.txt (the first also
printed a CPU profile of one new-shape pass: cuDNN's attention forward took 83 of its 119 ms); this module is those
scripts tidied into one, not yet run as such.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


class Probe:
    """The model on the GPU and timed forward passes of random inputs of a given shape."""

    def __init__(self, path: str) -> None:
        import torch
        from transformers import AutoModel

        self.torch = torch
        self.model = AutoModel.from_pretrained(path, dtype=torch.float16, attn_implementation="sdpa").cuda().eval()

    def inputs(self, rows: int, length: int, pad: bool) -> tuple[Any, Any]:
        """Random ids; with ``pad``, the second half of the rows is padded to half the length."""
        torch = self.torch
        ids = torch.randint(1000, 2000, (rows, length), device="cuda")
        mask = torch.ones(rows, length, dtype=torch.long, device="cuda")
        if pad and rows > 1:
            mask[rows // 2 :, length // 2 :] = 0
        return ids, mask

    def times(self, rows: int, length: int, pad: bool, reps: int = 5) -> list[float]:
        """Milliseconds of ``reps`` forward passes of one input shape, the first one included."""
        torch = self.torch
        ids, mask = self.inputs(rows, length, pad)
        out = []
        for _ in range(reps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.inference_mode():
                self.model(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
            out.append((time.perf_counter() - start) * 1e3)
        return out


def new_shapes(probe: Probe) -> None:
    """First pass of a new shape against a repeat, with the default backends and with cuDNN's attention off."""
    torch = probe.torch
    lengths = iter(range(20, 500, 3))
    for setting in ("cudnn on (default)", "cudnn off"):
        torch.backends.cuda.enable_cudnn_sdp(setting == "cudnn on (default)")
        for rows, pad in ((1, False), (16, True)):
            shapes = [next(lengths) for _ in range(8)]
            first = [probe.times(rows, n, pad, reps=1)[0] for n in shapes]
            again = [probe.times(rows, n, pad, reps=1)[0] for n in shapes]
            say(f"{setting:20s} batch {rows:2d}: new shapes p50 {statistics.median(first):7.2f} ms (max "
                f"{max(first):7.2f}), same shapes again p50 {statistics.median(again):7.2f} ms")  # fmt: skip
    torch.backends.cuda.enable_cudnn_sdp(True)


def backends(probe: Probe) -> None:
    """Each SDPA backend alone: first pass and the median of the repeats."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}  # fmt: skip
    for rows, length, pad in ((1, 128, False), (16, 128, True), (64, 256, True)):
        row = []
        for name, backend in chosen.items():
            try:
                with sdpa_kernel([backend]):
                    t = probe.times(rows, length, pad)
                row.append(f"{name} first {t[0]:6.1f} then {statistics.median(t[1:]):6.2f}")
            except RuntimeError as exc:  # the backend cannot run these inputs (flash takes no padding mask)
                row.append(f"{name} n/a ({type(exc).__name__})")
        say(f"b={rows:3d} L={length} pad={pad}: " + " | ".join(row))

    def firsts(label: str, shapes: Sequence[tuple[int, int, bool]]) -> None:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            say(f"{label} {[f'{probe.times(r, n, p, 2)[0]:.1f}' for r, n, p in shapes]}")

    firsts("cudnn warm b=8 L=200:", [(8, 200, True)])
    firsts("cudnn, new B same L:", [(b, 200, True) for b in (9, 10, 11, 12)])
    firsts("cudnn, same B new L:", [(8, n, True) for n in (201, 202, 203, 204)])
    firsts("cudnn, known B and L again:", [(9, 200, True), (10, 200, True)])
    firsts("cudnn, no mask b=1 new L:", [(1, n, False) for n in (301, 302, 303)])
    firsts("cudnn, no mask L=301 new B:", [(b, 301, False) for b in (2, 3, 4)])


def graph_replay(probe: Probe) -> None:
    """A single-input pass replayed as a CUDA graph: what is left once kernel launches cost nothing."""
    torch = probe.torch
    ids, mask = probe.inputs(1, 128, False)
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                probe.model(input_ids=ids, attention_mask=mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            probe.model(input_ids=ids, attention_mask=mask)
        times = []
        for _ in range(20):
            torch.cuda.synchronize()
            start = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    say(f"CUDA graph replay b=1 L=128: p50 {statistics.median(times):.2f} ms")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m benchmarks.gpu_attention MODEL_DIR")
    probe = Probe(args[0])
    say(f"torch {probe.torch.__version__}, {probe.torch.cuda.get_device_name()}")
    probe.times(1, 16, False, reps=1)
    probe.times(4, 64, True, reps=1)
    parts: list[Callable[[Probe], None]] = [new_shapes, backends, graph_replay]
    for part in parts:
        part(probe)


if __name__ == "__main__":
    main()
