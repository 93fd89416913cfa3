"""cuda_staging on a CPU device: each CUDA-only step is its plain eager equivalent."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor

from inference_consumer.cuda_staging import Normalizer, SideStream, on_cuda, to_device

CPU = torch.device("cpu")


def test_to_device_on_cpu_is_the_tensor_itself() -> None:
    tensor = torch.arange(6, dtype=torch.uint8)
    assert to_device(tensor, CPU) is tensor


def test_the_side_stream_on_cpu_runs_in_the_callers_thread() -> None:
    stream = SideStream(CPU)
    with stream.active():
        result = torch.ones(3) * 2
    stream.hand_over([result])
    assert torch.equal(result, torch.full((3,), 2.0)) and not on_cuda(CPU)


def test_normalizer_is_bit_equal_to_the_processors_and_captures_no_graph_on_cpu(
    tiny_model_dir: Path,
) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir).image_processor  # type: ignore[no-untyped-call]
    edge = processor.crop_size["height"]
    images = torch.randint(0, 256, (5, 3, edge, edge), dtype=torch.uint8)
    normalize = Normalizer(
        mean=processor.image_mean,
        std=processor.image_std,
        rescale_factor=processor.rescale_factor,
        device=CPU,
        graphs=True,
    )

    expected = processor(images=list(images), return_tensors="pt").pixel_values

    assert torch.equal(normalize(images), expected)
    assert normalize.captured == 0
