"""CUDA-only staging for the tensor image pipeline: pinned host buffers and non-blocking copies, a side
stream on which the next batch is prepared while the model runs the current one, and CUDA graphs for the
fixed-shape normalisation.

Every piece takes the device it works for and, on a CPU device, is the plain eager equivalent (a copy, a
no-op stream, an eager normalisation), so a machine without a GPU runs the very same calls in its tests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Batch sizes with a captured graph each; others run eagerly (each graph keeps its own memory pool).
MAX_GRAPHS = 8


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`. On CUDA it goes through a pinned buffer with a non-blocking copy on the
    current stream (the caching host allocator keeps the buffer until the copy is done); on CPU it is the
    tensor itself."""
    if not on_cuda(device):
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class SideStream:
    """Where the pipeline's device work runs: its own CUDA stream on a GPU, the caller's thread on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stream = torch.cuda.Stream(device) if on_cuda(device) else None  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self._stream is None:
            yield
            return
        with torch.cuda.stream(self._stream):
            yield

    def hand_over(self, tensors: Sequence[torch.Tensor]) -> None:
        """Make tensors made on this stream safe to use (and free) on the default stream, where the
        model runs: their memory is not reused before the default stream's queued work is done, and this
        stream's work on them is finished when this returns."""
        if self._stream is None:
            return
        consumer = torch.cuda.default_stream(self.device)
        for tensor in tensors:
            tensor.record_stream(consumer)
        self._stream.synchronize()


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    images: torch.Tensor  # static input, uint8 (B, 3, E, E)
    pixels: torch.Tensor  # static output, float32


class Normalizer:
    """uint8 (B, 3, E, E) -> float32 (x - mean / rescale) / (std / rescale): the Hugging Face processor's
    fused rescale-and-normalise, op for op (a subtraction, then a division, in float32). On CUDA, with
    graphs on, each batch size (up to MAX_GRAPHS of them) is captured once and replayed; a capture that
    fails turns graphs off for good and the eager ops run."""

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        rescale_factor: float,
        device: torch.device,
        graphs: bool,
    ) -> None:
        # The processor's own arithmetic (float32 tensor times a Python float), so results are bit-equal.
        self._mean = (torch.tensor(mean, device=device) * (1.0 / rescale_factor)).view(-1, 1, 1)
        self._std = (torch.tensor(std, device=device) * (1.0 / rescale_factor)).view(-1, 1, 1)
        self._graphs_on = graphs and on_cuda(device)
        self._graphs: dict[tuple[int, ...], _Graph] = {}

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        graph = self._graph(images) if self._graphs_on else None
        if graph is None:
            return self.eager(images)
        graph.images.copy_(images)
        graph.graph.replay()
        return graph.pixels.clone()  # the next replay overwrites the static output

    def eager(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(torch.float32) - self._mean) / self._std

    def _graph(self, images: torch.Tensor) -> _Graph | None:
        shape = tuple(images.shape)
        if shape not in self._graphs and len(self._graphs) < MAX_GRAPHS:
            try:
                self._graphs[shape] = self._capture(images)
            except RuntimeError as exc:
                log.warning("CUDA graph capture failed, normalising eagerly from now on: %s", exc)
                self._graphs_on = False
                return None
        return self._graphs.get(shape)

    def _capture(self, images: torch.Tensor) -> _Graph:
        static = torch.empty_like(images)
        static.copy_(images)
        warmup = torch.cuda.Stream(images.device)  # type: ignore[no-untyped-call]
        warmup.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(warmup):  # as torch.cuda.graphs' docs ask: warm up on a side stream first
            self.eager(static)
        torch.cuda.current_stream(images.device).wait_stream(warmup)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pixels = self.eager(static)
        return _Graph(graph=graph, images=static, pixels=pixels)
