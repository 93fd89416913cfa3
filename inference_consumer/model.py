"""Loads the GIT model once and turns pictures into titles."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from core.images import decode_image
from core.model_id import public_model_id
from core.settings import WorkerSettings
from inference_consumer.decoding import GreedyDecoder, build_decoder
from inference_consumer.errors import ModelUnavailableError
from inference_consumer.shared_weights import NotShareableError, find_safetensors, share_weights

log = logging.getLogger(__name__)

_HUB_PROBE_TIMEOUT_S = 5.0


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


def hub_answers(repo_id: str) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, as huggingface_hub reads it) answers for repo_id
    within seconds. Asked once, without retries: from_pretrained retries each file it looks for with
    backoff, minutes in all when the hub cannot be reached. Raises when the hub answers no."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]  # public, not re-exported

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ModelUnavailableError(
            f"CAPTIONER_MODEL {repo_id!r} is neither a model directory nor a Hugging Face hub id"
        ) from exc
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=_HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError as exc:  # an answer: no such model, gated, not authorised
        raise ModelUnavailableError(
            f"the Hugging Face hub at {constants.ENDPOINT} will not serve model {repo_id!r}: {exc}\n"
            "Check CAPTIONER_MODEL, and HF_TOKEN for a gated or private model."
        ) from exc
    except Exception as exc:  # no answer: the hub client's HTTP library raises its own transport errors
        log.warning("the Hugging Face hub at %s does not answer (%s)", constants.ENDPOINT, exc)
        return False
    return True


def load_caption_model(settings: WorkerSettings) -> CaptionModel:
    """from_pretrained of a hub id or local directory; one clear error when it can't be had. A hub id is
    downloaded (or refreshed) while the hub answers, else taken from the local cache alone."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    offline = not Path(settings.model).is_dir() and not hub_answers(settings.model)
    try:
        processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            settings.model, local_files_only=offline
        )
        model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype, local_files_only=offline)
    except (OSError, ValueError) as exc:
        unreachable = " (the Hugging Face hub does not answer and it is not in the local cache)"
        raise ModelUnavailableError(
            f"cannot load model {settings.model!r}{unreachable if offline else ''}: {exc}\n"
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
    name = public_model_id(settings.model, settings.model_id)
    log.info(
        "loaded %s from %s on %s (%s), decoder=%s", name, settings.model, device, dtype, settings.decoder
    )
    try:
        decoder = build_decoder(settings.decoder, model, packed_cpu_weights=settings.packed_cpu_weights)
    except NotImplementedError as exc:  # a model or generation setting the fast decoder does not follow
        raise ModelUnavailableError(f"{exc}; CAPTIONER_DECODER=hf runs it with model.generate") from exc
    return CaptionModel(
        name=name, processor=processor, model=model, decoder=decoder, device=device, dtype=dtype
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
