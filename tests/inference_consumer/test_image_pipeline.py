"""The tensor image pipeline on the CPU: the same functions a GPU worker runs with a CUDA device."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.errors import ImageTooCostlyError, ImageTooLargeError, InvalidImageError
from core.settings import WorkerSettings
from inference_consumer import image_pipeline
from inference_consumer.image_pipeline import DevicePreprocessor, ImagePipeline, resolve_pipeline
from inference_consumer.model import CaptionModel, load_caption_model
from tests.support.hostile import bad_images
from tests.support.images import encode, make_image_bytes, make_picture, scan_bomb

MAX_PIXELS = 24_000_000
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> CaptionModel:
    return load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def pipeline(model: CaptionModel) -> ImagePipeline:
    return ImagePipeline(model.processor.image_processor, device=CPU, max_pixels=MAX_PIXELS)


def pil_path(model: CaptionModel, data: bytes) -> torch.Tensor:
    return model.pixels(data, max_pixels=MAX_PIXELS)


def outcome(call: object) -> str:
    """The error class a call raises, or 'ok'."""
    try:
        call()  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def jpeg(picture: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def with_orientation(picture: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(picture, exif=exif)


def test_small_jpegs_and_other_formats_give_the_pil_paths_pixels_exactly(
    model: CaptionModel, pipeline: ImagePipeline
) -> None:
    # Below 2x the model's edge Pillow decodes a JPEG at full size too: the same libjpeg-turbo output.
    images = [
        make_image_bytes("JPEG", width=60, height=45, seed=1),
        make_image_bytes("PNG", width=200, height=90, seed=2),
        make_image_bytes("WEBP", width=90, height=120, seed=3),
        encode(make_picture(50, 40, seed=4).convert("L"), "JPEG"),
        jpeg(make_picture(63, 50, seed=5), progressive=True),
    ]

    batch = pipeline.prepare_batch(images)

    assert batch.errors == [None] * len(images)
    assert torch.equal(batch.pixels, torch.stack([pil_path(model, data) for data in images]))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_the_pil_path_applies_it(
    model: CaptionModel, pipeline: ImagePipeline, orientation: int
) -> None:
    data = with_orientation(make_picture(60, 40, seed=orientation), orientation)

    pixels = pipeline.prepare_batch([data]).pixels[0]

    assert torch.equal(pixels, pil_path(model, data))
    if orientation != 1:
        assert not torch.equal(
            pixels,
            pipeline.prepare_batch([with_orientation(make_picture(60, 40, seed=orientation), 1)]).pixels[0],
        )


def test_hostile_images_fail_alone_with_the_pil_paths_errors(
    model: CaptionModel, pipeline: ImagePipeline
) -> None:
    good = make_image_bytes("JPEG", width=80, height=60, seed=7)
    huge = bytearray(make_image_bytes("JPEG", width=80, height=60, seed=8))
    sof = huge.index(b"\xff\xc0")
    huge[sof + 5 : sof + 9] = (6000).to_bytes(2, "big") * 2  # a 6000x6000 header on a tiny file
    hostile = [
        *bad_images(),
        bytes(huge),
        jpeg(make_picture(seed=9).convert("CMYK")),
        jpeg(make_picture(seed=10), progressive=True)[:300],
    ]
    images = [good, *hostile, good]

    batch = pipeline.prepare_batch(images)

    expected = [outcome(lambda data=data: pil_path(model, data)) for data in images]
    assert [type(error).__name__ if error else "ok" for error in batch.errors] == expected
    assert "ImageTooLargeError" in expected and expected.count("ok") >= 4
    assert torch.equal(batch.pixels[0], pil_path(model, good))
    assert torch.equal(batch.pixels[-1], pil_path(model, good))


def test_a_jpeg_the_device_decoder_rejects_is_decoded_by_pil(
    model: CaptionModel, pipeline: ImagePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [make_image_bytes("JPEG", width=70, height=50, seed=seed) for seed in range(3)]

    def rejects(_inputs: list[torch.Tensor], _device: torch.device) -> list[torch.Tensor]:
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(image_pipeline, "_decode_jpeg", rejects)
    batch = pipeline.prepare_batch(images)

    assert batch.errors == [None] * 3
    assert torch.equal(batch.pixels, torch.stack([pil_path(model, data) for data in images]))


def test_large_jpegs_are_decoded_in_chunks_within_the_pixel_budget(
    pipeline: ImagePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    decode = image_pipeline._decode_jpeg

    def counting(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(inputs))
        return decode(inputs, device)

    monkeypatch.setattr(image_pipeline, "_decode_jpeg", counting)
    monkeypatch.setattr(image_pipeline, "DECODE_PIXEL_BUDGET", 2 * 300 * 200)
    pipeline.prepare_batch([make_image_bytes("JPEG", width=300, height=200, seed=s) for s in range(5)])

    assert calls == [2, 2, 1]


def test_the_device_preprocessor_batches_the_pool_threads_images(
    model: CaptionModel, pipeline: ImagePipeline
) -> None:
    images = [make_image_bytes("JPEG", width=64 + seed, height=48, seed=seed) for seed in range(12)]
    images[5] = b"not an image"

    with DevicePreprocessor(pipeline, max_batch=8, cpu_slots=2) as on_device, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(on_device.pixels, data) for data in images]
        outcomes = [future.exception() or future.result() for future in futures]

    assert isinstance(outcomes[5], InvalidImageError)
    for data, result in zip(images, outcomes, strict=True):
        if data != images[5]:
            assert isinstance(result, torch.Tensor) and torch.equal(result, pil_path(model, data))


def test_auto_is_the_tensor_pipeline_on_cuda_and_pil_on_cpu() -> None:
    assert resolve_pipeline("auto", torch.device("cuda")) == "tensor"
    assert resolve_pipeline("auto", CPU) == "pil"
    assert resolve_pipeline("tensor", CPU) == "tensor"
    assert resolve_pipeline("pil", torch.device("cuda")) == "pil"


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(pipeline: ImagePipeline) -> None:
    small_limit = ImagePipeline(pipeline._processor, device=CPU, max_pixels=100)

    batch = small_limit.prepare_batch([make_image_bytes("JPEG", width=20, height=10)])

    assert isinstance(batch.errors[0], ImageTooLargeError)
    assert not batch.pixels.any()


def test_a_scan_bomb_is_refused_before_decode_jpeg_and_the_batch_goes_on(
    model: CaptionModel, pipeline: ImagePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb, good = scan_bomb(400, 300, scans=2000), make_image_bytes("JPEG", width=80, height=60, seed=3)
    handed: list[bytes] = []
    decode = image_pipeline._decode_jpeg

    def recording(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        handed.extend(bytes(item.numpy()) for item in inputs)
        return decode(inputs, device)

    monkeypatch.setattr(image_pipeline, "_decode_jpeg", recording)
    batch = pipeline.prepare_batch([bomb, good])

    assert isinstance(batch.errors[0], ImageTooCostlyError) and batch.errors[1] is None
    assert handed == [good]  # the device decoder never saw the bomb
    assert torch.equal(batch.pixels[1], pil_path(model, good))
