"""Image bytes -> model input in batches, on the model's device (CAPTIONER_IMAGE_PIPELINE=tensor).

Two steps. `stage` (CPU, one image, on the decode pool): the same header checks as core/images.py
(accepted formats, pixel limit, integrity) before anything is decoded; a baseline or progressive JPEG in
RGB or greyscale keeps its bytes for the device decoder, anything else (PNG, WEBP, CMYK JPEG, ...) is
decoded by core.images.decode_image as the PIL path does. `finish` (the device, a batch): the JPEGs are
decoded together by `torchvision.io.decode_jpeg` (nvjpeg on CUDA, libjpeg-turbo on CPU: the same call),
a few hundred megapixels at a time; reduced, cut to 3:1 and turned upright (EXIF) as core.images
does it (_reduced_like_pil); resized and centre-cropped by the model's own Hugging Face processor on
the tensors; normalised (cuda_staging.Normalizer). A JPEG the device decoder rejects is decoded by
PIL instead, so each image ends as the PIL path would end it: pixels, or the same InvalidImageError
family. Unlike the PIL path, a large JPEG is decoded at full size (nvjpeg has no DCT scaling) and
box-averaged down; the agreement with the PIL path is measured in tests and in
`python -m bench.gpu --agreement` (docs/performance.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from core.errors import CaptionerError
from core.images import MAX_ASPECT_RATIO, decode_image, exif_orientation, inspect_image, open_image
from inference_consumer.cuda_staging import Normalizer, SideStream, to_device

if TYPE_CHECKING:
    from inference_consumer.model import CaptionModel

log = logging.getLogger(__name__)

DEVICE_JPEG_FORMATS = ("JPEG", "MPO")
DEVICE_JPEG_MODES = ("RGB", "L")
# Decoded at once by one decode_jpeg call: bounds the device memory of a batch's full-size pictures
# (3 bytes a pixel: ~0.8 GB).
DECODE_PIXEL_BUDGET = 256_000_000
_DECODER_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, MemoryError)

Mode = Literal["pil", "tensor"]


def resolve_pipeline(setting: str, device: torch.device) -> Mode:
    """CAPTIONER_IMAGE_PIPELINE: auto is the tensor pipeline on CUDA and the PIL path on CPU."""
    if setting == "auto":
        return "tensor" if device.type == "cuda" else "pil"
    return "tensor" if setting == "tensor" else "pil"


def device_preprocessor(
    model: CaptionModel, *, setting: str, max_pixels: int, max_batch: int, cpu_slots: int
) -> DevicePreprocessor | None:
    """The worker's tensor-mode preprocessing for this model, or None where the PIL path runs."""
    if resolve_pipeline(setting, model.device) == "pil":
        return None
    pipeline = ImagePipeline(model.processor.image_processor, device=model.device, max_pixels=max_pixels)
    return DevicePreprocessor(pipeline, max_batch=max_batch, cpu_slots=cpu_slots)


@dataclass(frozen=True, slots=True)
class StagedImage:
    """One image after its CPU step: JPEG bytes for the device decoder, or a decoded upright picture."""

    data: bytes
    jpeg: torch.Tensor | None = None  # the file's bytes, 1-D uint8, on the CPU (decode_jpeg's input)
    orientation: int = 1
    picture: torch.Tensor | None = None  # (3, H, W) uint8, upright and bounded (the PIL fallback)
    pixels: int = 0


@dataclass(frozen=True)
class PreparedBatch:
    pixels: torch.Tensor  # (B, 3, E, E) float32 on the device; a failed image's row is zeros
    errors: list[CaptionerError | None]


class ImagePipeline:
    """The model's preprocessing, batched on `device`; `image_processor` is its Hugging Face processor."""

    def __init__(
        self, image_processor: Any, *, device: torch.device, max_pixels: int, graphs: bool = True
    ) -> None:
        self.device = device
        self.edge = int(image_processor.crop_size["height"])
        self._processor = image_processor
        self._max_pixels = max_pixels
        self._normalize = Normalizer(
            mean=image_processor.image_mean,
            std=image_processor.image_std,
            rescale_factor=image_processor.rescale_factor,
            device=device,
            graphs=graphs,
        )
        self.stream = SideStream(device)

    def prepare_batch(self, datas: Sequence[bytes]) -> PreparedBatch:
        """Image bytes -> one batch of model input; a bad image fails alone, with its own error."""
        staged: list[StagedImage | CaptionerError] = []
        for data in datas:
            try:
                staged.append(self.stage(data))
            except CaptionerError as exc:
                staged.append(exc)
        good = [item for item in staged if isinstance(item, StagedImage)]
        finished = iter(self.finish(good) if good else [])
        results = [item if isinstance(item, CaptionerError) else next(finished) for item in staged]
        pixels = torch.zeros((len(datas), 3, self.edge, self.edge), device=self.device)
        for row, result in enumerate(results):
            if isinstance(result, torch.Tensor):
                pixels[row] = result
        return PreparedBatch(
            pixels=pixels, errors=[r if isinstance(r, CaptionerError) else None for r in results]
        )

    def stage(self, data: bytes) -> StagedImage:
        """The CPU step: header checks, then the JPEG's bytes, or the PIL fallback's picture."""
        info = inspect_image(data, max_pixels=self._max_pixels)
        if info.format in DEVICE_JPEG_FORMATS:
            with open_image(data, max_pixels=self._max_pixels) as header:
                mode, orientation = header.mode, exif_orientation(header)
            if mode in DEVICE_JPEG_MODES:
                jpeg = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return StagedImage(
                    data=data, jpeg=jpeg, orientation=orientation, pixels=info.width * info.height
                )
        return self._decode_on_cpu(data)

    def finish(self, staged: Sequence[StagedImage]) -> list[torch.Tensor | CaptionerError]:
        """The device step for a batch: (3, E, E) float32 pixels, or the image's error, in order."""
        with self.stream.active():
            pictures = self._pictures(staged)
            good = [index for index, picture in enumerate(pictures) if isinstance(picture, torch.Tensor)]
            results: list[torch.Tensor | CaptionerError] = list(pictures)
            if good:
                pixels = self._resize_and_normalize([pictures[index] for index in good])  # type: ignore[misc]
                rows = list(pixels.unbind(0))
                self.stream.hand_over(rows)
                for index, row in zip(good, rows, strict=True):
                    results[index] = row
        return results

    def _pictures(self, staged: Sequence[StagedImage]) -> list[torch.Tensor | CaptionerError]:
        """Upright, bounded uint8 pictures on the device, or each failed image's error."""
        pictures: list[torch.Tensor | CaptionerError | None] = [None] * len(staged)
        jpegs = [index for index, item in enumerate(staged) if item.jpeg is not None]
        for chunk in _chunks(jpegs, [staged[index].pixels for index in jpegs], DECODE_PIXEL_BUDGET):
            for index, picture in zip(chunk, self._decode_jpegs([staged[i] for i in chunk]), strict=True):
                pictures[index] = picture
        for index, item in enumerate(staged):
            if item.picture is not None:
                pictures[index] = to_device(item.picture, self.device)
        return [picture for picture in pictures if picture is not None]  # each had bytes or a picture

    def _decode_jpegs(self, staged: Sequence[StagedImage]) -> list[torch.Tensor | CaptionerError]:
        """One batched decode; when it fails, each image alone, and PIL for those that fail again."""
        inputs = [item.jpeg for item in staged if item.jpeg is not None]
        try:
            decoded: list[torch.Tensor] = _decode_jpeg(inputs, self.device)
        except _DECODER_ERRORS:
            return [self._decode_one(item) for item in staged]
        return [
            _upright(_reduced_like_pil(picture, self.edge), item.orientation)
            for picture, item in zip(decoded, staged, strict=True)
        ]

    def _decode_one(self, item: StagedImage) -> torch.Tensor | CaptionerError:
        assert item.jpeg is not None
        try:
            picture = _decode_jpeg([item.jpeg], self.device)[0]
        except _DECODER_ERRORS:
            try:
                fallback = self._decode_on_cpu(item.data)
            except CaptionerError as exc:
                return exc
            assert fallback.picture is not None
            return to_device(fallback.picture, self.device)
        return _upright(_reduced_like_pil(picture, self.edge), item.orientation)

    def _decode_on_cpu(self, data: bytes) -> StagedImage:
        """core.images' decoding, as the PIL path does it: an upright, bounded RGB picture."""
        picture = decode_image(data, max_pixels=self._max_pixels, target_edge=self.edge)
        array = torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy())
        return StagedImage(data=data, picture=array.permute(2, 0, 1).contiguous())

    def _resize_and_normalize(self, pictures: list[torch.Tensor]) -> torch.Tensor:
        """The processor's resize (shortest edge, bicubic, antialiased) and centre crop on the device's
        tensors, as uint8; then its rescale and normalisation, which has a fixed shape (Normalizer)."""
        cropped: torch.Tensor = self._processor(
            images=pictures, do_rescale=False, do_normalize=False, return_tensors="pt"
        ).pixel_values
        return self._normalize(cropped)


class DevicePreprocessor:
    """The worker's decode pool in tensor mode. Each pool thread stages its image on the CPU (at most
    `cpu_slots` at a time, which bounds the memory of PIL fallbacks), then waits while one thread finishes
    every image staged by then as one batch on the pipeline's side stream: the next batch is prepared
    while the model runs the current one."""

    def __init__(self, pipeline: ImagePipeline, *, max_batch: int, cpu_slots: int) -> None:
        self.pipeline = pipeline
        self._max_batch = max_batch
        self._cpu_slots = threading.Semaphore(cpu_slots)
        self._waiting: queue.Queue[tuple[StagedImage, Future[torch.Tensor]]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-preprocess", daemon=True)

    def __enter__(self) -> DevicePreprocessor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Finishes what is waiting, then stops."""
        self._stopping.set()
        self._thread.join()

    def pixels(self, data: bytes) -> torch.Tensor:
        """Image bytes -> (3, E, E) model input on the device. Blocking: runs on the decode pool."""
        with self._cpu_slots:
            staged = self.pipeline.stage(data)
        future: Future[torch.Tensor] = Future()
        self._waiting.put((staged, future))
        return future.result()

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._waiting.empty()):
            try:
                batch = [self._waiting.get(timeout=0.05)]
            except queue.Empty:
                continue
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            self._finish(batch)

    def _finish(self, batch: list[tuple[StagedImage, Future[torch.Tensor]]]) -> None:
        try:
            results = self.pipeline.finish([staged for staged, _ in batch])
        except Exception as exc:  # a bug or a device failure: each image's job fails with it, not the thread
            log.exception("preparing a batch of %d images failed", len(batch))
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, torch.Tensor):
                future.set_result(result)
            else:
                future.set_exception(result)


def _decode_jpeg(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders for TorchCodec's
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg  # type: ignore[import-untyped]

        decoded = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device)
    return list(decoded)


def _reduced_like_pil(picture: torch.Tensor, edge: int) -> torch.Tensor:
    """What core.images.decode_image makes of a JPEG before the processor, in the same order and with the
    same arithmetic: Pillow's draft (a DCT scale of 1/2, 1/4 or 1/8 that leaves at least twice `edge`;
    here a box average over the full-size decode, which is what a scaled IDCT approximates), the centre
    of an extreme aspect ratio, and the box reduction while the short side is at least 4x `edge`."""
    height, width = picture.shape[-2:]
    picture = _box_reduce(picture, _draft_scale(width, height, 2 * edge))
    height, width = picture.shape[-2:]
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        keep_w = min(width, max(1, round(MAX_ASPECT_RATIO * height)))
        keep_h = min(height, max(1, round(MAX_ASPECT_RATIO * width)))
        left, top = (width - keep_w) // 2, (height - keep_h) // 2
        picture = picture[:, top : top + keep_h, left : left + keep_w]
    return _box_reduce(picture, min(picture.shape[-2:]) // (2 * edge))


def _draft_scale(width: int, height: int, requested: int) -> int:
    """Pillow's JpegImageFile.draft: the largest of 8, 4, 2, 1 within min(width, height) // requested."""
    fits = min(width // requested, height // requested)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def _box_reduce(picture: torch.Tensor, factor: int) -> torch.Tensor:
    """Image.reduce: the mean of each factor x factor box (partial boxes at the far edges), rounded."""
    if factor < 2:
        return picture
    boxes = torch.nn.functional.avg_pool2d(picture[None].float(), factor, ceil_mode=True)[0]
    return boxes.round_().to(torch.uint8)


def _upright(picture: torch.Tensor, orientation: int) -> torch.Tensor:
    """PIL's transpose for each EXIF orientation, on a (C, H, W) tensor."""
    if orientation == 2:
        return picture.flip(-1)
    if orientation == 3:
        return picture.flip(-1, -2)
    if orientation == 4:
        return picture.flip(-2)
    if orientation == 5:
        return picture.transpose(-1, -2)
    if orientation == 6:
        return picture.rot90(-1, (-2, -1))
    if orientation == 7:
        return picture.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return picture.rot90(1, (-2, -1))
    return picture


def _chunks(indexes: list[int], costs: list[int], budget: int) -> Iterator[list[int]]:
    """Consecutive groups whose summed cost stays within budget (a single costlier item goes alone)."""
    chunk: list[int] = []
    total = 0
    for index, cost in zip(indexes, costs, strict=True):
        if chunk and total + cost > budget:
            yield chunk
            chunk, total = [], 0
        chunk.append(index)
        total += cost
    if chunk:
        yield chunk
