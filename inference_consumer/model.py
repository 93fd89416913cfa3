"""Loads the GIT model once and turns pictures into titles."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from core.images import decode_image
from core.settings import WorkerSettings
from inference_consumer.decoding import GreedyDecoder, build_decoder
from inference_consumer.errors import ModelUnavailableError
from inference_consumer.shared_weights import NotShareableError, find_safetensors, share_weights

log = logging.getLogger(__name__)


def configure_torch_threads(threads: int) -> int:
    """Intra-op threads from config (0 = every core), never torch's own guess."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("CAPTIONER_DEVICE=cuda but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


@dataclass
class CaptionModel:
    """The processor, model and decoder of one worker process."""

    name: str
    processor: Any
    model: Any
    decoder: GreedyDecoder
    device: torch.device
    dtype: torch.dtype

    @property
    def image_edge(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One picture -> (3, H, W) float pixels on the CPU. Blocking: runs in the decode pool."""
        pixel_values: torch.Tensor = self.processor.image_processor(
            images=[image], return_tensors="pt"
        ).pixel_values
        return pixel_values[0]

    def pixels(self, data: bytes, *, max_pixels: int) -> torch.Tensor:
        """Image bytes -> (3, H, W) model input: what a worker's decode pool does for each job."""
        return self.preprocess(decode_image(data, max_pixels=max_pixels, target_edge=self.image_edge))

    def caption(
        self, pixel_values: list[torch.Tensor], *, max_new_tokens: list[int], min_new_tokens: int = 0
    ) -> list[str]:
        """Greedy titles; each image gets its own token limit. Greedy decoding is prefix-stable, so
        cutting a longer decode at N tokens gives what a decode limited to N gives."""
        batch = torch.stack(pixel_values).to(device=self.device, dtype=self.dtype, non_blocking=True)
        with torch.inference_mode():
            longest = max(max_new_tokens)
            token_ids = self.decoder.generate(
                batch, max_new_tokens=longest, min_new_tokens=min(min_new_tokens, longest)
            ).cpu()
        rows = [row[: 1 + limit] for row, limit in zip(token_ids, max_new_tokens, strict=True)]
        titles: list[str] = self.processor.batch_decode(rows, skip_special_tokens=True)
        return [title.strip() for title in titles]


def load_caption_model(settings: WorkerSettings) -> CaptionModel:
    """from_pretrained of a hub id or local directory; one clear error when it can't be had."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(settings.model)  # type: ignore[no-untyped-call]
        model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"cannot load model {settings.model!r}: {exc}\n"
            "Set CAPTIONER_MODEL to a local model directory (for a test model: "
            "`captioner model make --size tiny --out DIR`), or give this machine access to the "
            "Hugging Face hub (and HF_TOKEN if needed) to download microsoft/git-base-textcaps."
        ) from exc
    model = model.to(device).eval()  # type: ignore[arg-type]
    if device.type == "cpu" and dtype == torch.float32 and settings.quantize == "none":
        share_weights_if_possible(model, settings.model)
    else:
        log.info("weights: private copy (shared file mapping is for float32 on the CPU, unquantized)")
    if settings.quantize == "int8":
        from inference_consumer.decoding import quantize_int8

        try:
            model = quantize_int8(model)
        except ModuleNotFoundError as exc:
            raise ModelUnavailableError(
                "CAPTIONER_QUANTIZE=int8 needs torchao: pip install 'captioner[int8]'"
            ) from exc
    log.info("loaded %s on %s (%s), decoder=%s", settings.model, device, dtype, settings.decoder)
    return CaptionModel(
        name=settings.model,
        processor=processor,
        model=model,
        decoder=build_decoder(settings.decoder, model, packed_cpu_weights=settings.packed_cpu_weights),
        device=device,
        dtype=dtype,
    )


def share_weights_if_possible(model: torch.nn.Module, name: str) -> bool:
    """Serve the weights from a read-only shared mapping of the model's safetensors file, so workers on
    one host share one copy; else keep from_pretrained's tensors. Logs which, and why."""
    path = find_safetensors(name)
    if path is None:
        log.info("weights: private copy (no single model.safetensors file for %s)", name)
        return False
    try:
        shared = share_weights(model, path)
    except (NotShareableError, OSError) as exc:
        log.info("weights: private copy (%s: %s)", path.name, exc)
        return False
    log.info(
        "weights: %d tensors (%.0f MB) shared read-only from a memory map of %s",
        shared.tensors,
        shared.nbytes / 2**20,
        path,
    )
    return True
