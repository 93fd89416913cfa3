"""Loads the GIT model once and turns pictures into titles."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from core.cache_keys import REVISION
from core.cpu_features import bf16_refusal, host_cpu_flags
from core.images import decode_image
from core.model_id import public_model_id
from core.settings import WorkerSettings
from inference_consumer.decoding import GreedyDecoder, build_decoder
from inference_consumer.errors import ModelUnavailableError
from inference_consumer.shared_weights import NotShareableError, find_safetensors, share_weights
from inference_consumer.stages import DETOKENIZE, IMAGE_DECODE, PREPROCESS, STAGING, StageSink

log = logging.getLogger(__name__)

_HUB_PROBE_TIMEOUT_S = 5.0
_DIGEST_CHUNK_BYTES = 1024 * 1024


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


def check_dtype_supported(dtype: torch.dtype, device: torch.device, *, cpu_flags: Collection[str]) -> None:
    """bfloat16 on a CPU without native bfloat16 (`cpu_flags`: the host's, core.cpu_features) is refused
    at start, in one line: torch would emulate it, slower than float32."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        refusal = bf16_refusal(cpu_flags)
        if refusal is not None:
            raise ModelUnavailableError(refusal)


# One linear of the image encoder's MLP on a few images: the shape most of a batch's time is spent in.
BF16_PROBE_SHAPE = (512, 768, 3072)  # rows, in features, out features
BF16_PROBE_REPEATS = 6


def bf16_matmul_speedup(repeats: int = BF16_PROBE_REPEATS) -> float:
    """How many times faster this CPU runs BF16_PROBE_SHAPE's matrix product in bfloat16 than in float32
    (the best of `repeats` each, the two timed in turn so that a busy neighbour slows both, after one
    untimed call each, on torch's threads). The flags say a CPU has native bfloat16, not that it pays:
    AVX512-BF16 without AMX can run slower than float32."""
    rows, inputs, outputs = BF16_PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    operands = {
        dtype: (
            torch.randn(rows, inputs, generator=generator).to(dtype),
            torch.randn(outputs, inputs, generator=generator).to(dtype),
        )
        for dtype in (torch.float32, torch.bfloat16)
    }
    best = dict.fromkeys(operands, math.inf)
    with torch.inference_mode():
        for activations, weight in operands.values():
            torch.nn.functional.linear(activations, weight)
        for _ in range(repeats):
            for dtype, (activations, weight) in operands.items():
                started = time.perf_counter()
                torch.nn.functional.linear(activations, weight)
                best[dtype] = min(best[dtype], time.perf_counter() - started)
    return best[torch.float32] / best[torch.bfloat16]


def report_bf16_speed(speedup: float) -> None:
    """The opt-in stays the operator's, but a bfloat16 slower than float32 is told at start, with the
    measured ratio."""
    if speedup < 1.0:
        log.warning(
            "bfloat16 runs this CPU's matrix products at %.2fx the speed of float32 (measured at start: "
            "native bfloat16 without AMX-BF16 can be slower); CAPTIONER_DTYPE=float32 is faster here",
            speedup,
        )
    else:
        log.info("bfloat16 runs this CPU's matrix products at %.2fx the speed of float32", speedup)


@dataclass
class CaptionModel:
    """The processor, model and decoder of one worker process."""

    name: str
    processor: Any
    model: Any
    decoder: GreedyDecoder
    device: torch.device
    dtype: torch.dtype
    # The hub commit loaded, or CAPTIONER_MODEL_REVISION for a local directory; None: a local directory
    # without one, which the caption cache names by its files (directory_revision).
    revision: str | None = None

    @property
    def image_edge(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One picture -> (3, H, W) float pixels on the CPU. Blocking: runs in the decode pool."""
        pixel_values: torch.Tensor = self.processor.image_processor(
            images=[image], return_tensors="pt"
        ).pixel_values
        return pixel_values[0]

    def pixels(self, data: bytes, *, max_pixels: int, on_stage: StageSink | None = None) -> torch.Tensor:
        """Image bytes -> (3, H, W) model input: what a worker's decode pool does for each job."""
        started = time.perf_counter()
        picture = decode_image(data, max_pixels=max_pixels, target_edge=self.image_edge)
        decoded = time.perf_counter()
        pixels = self.preprocess(picture)
        if on_stage is not None:
            on_stage(IMAGE_DECODE, decoded - started)
            on_stage(PREPROCESS, time.perf_counter() - decoded)
        return pixels

    def caption(
        self,
        pixel_values: list[torch.Tensor],
        *,
        max_new_tokens: list[int],
        min_new_tokens: int = 0,
        on_stage: StageSink | None = None,
    ) -> list[str]:
        """Greedy titles; each image gets its own token limit. Greedy decoding is prefix-stable, so
        cutting a longer decode at N tokens gives what a decode limited to N gives. on_stage: told the
        seconds of each stage (inference_consumer/stages.py)."""
        started = time.perf_counter()
        batch = torch.stack(pixel_values).to(device=self.device, dtype=self.dtype, non_blocking=True)
        staged = time.perf_counter()
        if on_stage is not None:
            on_stage(STAGING, staged - started)
        with torch.inference_mode():
            longest = max(max_new_tokens)
            token_ids = self.decoder.generate(
                batch, max_new_tokens=longest, min_new_tokens=min(min_new_tokens, longest), on_stage=on_stage
            ).cpu()
        decoded = time.perf_counter()
        rows = [row[: 1 + limit] for row, limit in zip(token_ids, max_new_tokens, strict=True)]
        titles: list[str] = self.processor.batch_decode(rows, skip_special_tokens=True)
        if on_stage is not None:
            on_stage(DETOKENIZE, time.perf_counter() - decoded)
        return [title.strip() for title in titles]


def hub_answers(repo_id: str, revision: str | None = None) -> bool:
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
        get_hf_file_metadata(
            hf_hub_url(repo_id, "config.json", revision=revision), timeout=_HUB_PROBE_TIMEOUT_S
        )
    except HfHubHTTPError as exc:  # an answer: no such model, gated, not authorised
        raise ModelUnavailableError(
            f"the Hugging Face hub at {constants.ENDPOINT} will not serve model {repo_id!r}: {exc}\n"
            "Check CAPTIONER_MODEL, and HF_TOKEN for a gated or private model."
        ) from exc
    except Exception as exc:  # no answer: the hub client's HTTP library raises its own transport errors
        log.warning("the Hugging Face hub at %s does not answer (%s)", constants.ENDPOINT, exc)
        return False
    return True


def load_caption_model(settings: WorkerSettings, *, cpu_flags: Collection[str] | None = None) -> CaptionModel:
    """from_pretrained of a hub id or local directory; one clear error when it can't be had. A hub id is
    downloaded (or refreshed) while the hub answers, else taken from the local cache alone. `cpu_flags`:
    the CPU's /proc/cpuinfo flags (default: this host's)."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    cpu_flags = host_cpu_flags() if cpu_flags is None else cpu_flags
    check_dtype_supported(dtype, device, cpu_flags=cpu_flags)
    if device.type == "cpu" and dtype == torch.bfloat16 and settings.quantize == "none":
        report_bf16_speed(bf16_matmul_speedup())
    local = Path(settings.model).is_dir()
    revision = None if local else settings.model_revision  # a directory holds one revision
    offline = not local and not hub_answers(settings.model, revision)
    try:
        processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            settings.model, revision=revision, local_files_only=offline
        )
        model = AutoModelForCausalLM.from_pretrained(
            settings.model, revision=revision, dtype=dtype, local_files_only=offline
        )
    except (OSError, ValueError) as exc:
        unreachable = " (the Hugging Face hub does not answer and it is not in the local cache)"
        raise ModelUnavailableError(
            f"cannot load model {settings.model!r}{unreachable if offline else ''}: {exc}\n"
            "Set CAPTIONER_MODEL to a local model directory (for a test model: "
            "`captioner model make --size tiny --out DIR`), or give this machine access to the "
            "Hugging Face hub (and HF_TOKEN if needed) to download microsoft/git-base-textcaps."
        ) from exc
    model = model.to(device).eval()  # type: ignore[arg-type]
    use_vision_attention(model, settings.vision_attention)
    loaded = resolved_revision(settings, None if local else hub_commit(settings.model, revision))
    if device.type == "cpu" and dtype == torch.float32 and settings.quantize == "none":
        share_weights_if_possible(model, settings.model, revision=None if local else loaded)
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
        decoder = build_decoder(
            settings.decoder,
            model,
            packed_cpu_weights=settings.packed_cpu_weights,
            pad_steps_from=step_padding(settings, device, dtype, cpu_flags=cpu_flags),
        )
    except NotImplementedError as exc:  # a model or generation setting the fast decoder does not follow
        raise ModelUnavailableError(f"{exc}; CAPTIONER_DECODER=hf runs it with model.generate") from exc
    return CaptionModel(
        name=name,
        processor=processor,
        model=model,
        decoder=decoder,
        device=device,
        dtype=dtype,
        revision=loaded,
    )


def step_padding(
    settings: WorkerSettings, device: torch.device, dtype: torch.dtype, *, cpu_flags: Collection[str]
) -> int:
    """The fast decoder's `pad_steps_from`: CAPTIONER_PAD_DECODING_STEPS_FROM where MKL's float32 GEMM runs
    (the CPU, plain float32 weights: not packed, not int8) with AVX-512, whose kernel for fewer than 16 rows
    is the slow one; else 0. MKL's AVX2 kernel has no such step (docs/performance.md), so padding would only
    cost there."""
    mkl_float32 = (
        device.type == "cpu"
        and dtype == torch.float32
        and not settings.packed_cpu_weights
        and settings.quantize == "none"
    )
    return settings.pad_decoding_steps_from if mkl_float32 and "avx512f" in cpu_flags else 0


def use_vision_attention(model: Any, kind: str) -> None:
    """The image encoder's attention (CAPTIONER_VISION_ATTENTION). GIT's vision attention looks its
    implementation up on every call, but transformers refuses `attn_implementation="sdpa"` for the whole
    model, since GIT's text layers have no SDPA path: so the encoder's own config is switched after
    loading. Both decoders (and `generate`) then run the same encoder."""
    if kind == "eager":
        return
    encoder = getattr(getattr(model, "git", None), "image_encoder", None)
    if encoder is None:
        raise ModelUnavailableError(f"CAPTIONER_VISION_ATTENTION={kind} needs a GIT model's image encoder")
    encoder.config._attn_implementation = kind
    log.info("image encoder attention: %s (rounding differs from the default eager path)", kind)


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit of a hub model's snapshot that from_pretrained just loaded (or found) in the local hub
    cache, for `revision` (None: the default branch)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def resolved_revision(settings: WorkerSettings, commit: str | None) -> str | None:
    """A hub model's commit (whatever branch or tag CAPTIONER_MODEL_REVISION named), or a local
    directory's CAPTIONER_MODEL_REVISION, else its hub-cache snapshot's commit; None when neither says."""
    found = commit if commit is not None and REVISION.fullmatch(commit) else None
    if Path(settings.model).is_dir():
        return settings.model_revision or found
    return found or settings.model_revision


def directory_revision(directory: Path) -> str:
    """`sha256-<hex>` over the directory's own files (names and contents, hidden files and folders left
    out): a local model's identity when nothing names it. Reads every byte of the weights once."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        name = path.name.encode("utf-8", "surrogateescape")
        digest.update(len(name).to_bytes(4, "big") + name + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as file:
            while chunk := file.read(_DIGEST_CHUNK_BYTES):
                digest.update(chunk)
    return f"sha256-{digest.hexdigest()}"


def share_weights_if_possible(model: torch.nn.Module, name: str, *, revision: str | None = None) -> bool:
    """Serve the weights from a read-only shared mapping of the model's safetensors file, so workers on
    one host share one copy; else keep from_pretrained's tensors. Logs which, and why."""
    path = find_safetensors(name, revision)
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
