"""In-process GPU figures: the worker's own model code on CUDA, per dtype, decoder and batch size.

    python -m bench.gpu [--batches 1,8,32,64] [--dtypes float16,float32] [--out results.json]

No Kafka and no HTTP: this measures what one worker process's GPU can do, which is what the service's
throughput tends to on a GPU machine once the transport is not the limit. For each dtype it loads the
model exactly as a worker does (`load_caption_model`, CAPTIONER_DEVICE=cuda), checks that the fast decoder
gives `generate`'s token ids, and times `CaptionModel.caption` (host-to-device copy, decoding, detokenizing)
on preprocessed batches with the benchmark's fixed work (20 new tokens forced). It also times the worker's
CPU side, JPEG decode and preprocessing, which a GPU worker must keep up with, and the naive baseline
(one image at a time, HF `generate`, fp32) on the same GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench.images import BenchImage, make_images
from bench.inprocess import caption_model, decoders_agree, worker_pixels
from bench.models import ensure_model

if TYPE_CHECKING:
    import torch

    from inference_consumer.model import CaptionModel

TOKENS = 20
Item = TypeVar("Item")


@dataclass(frozen=True)
class BatchFigure:
    dtype: str
    decoder: str
    batch: int
    img_s: float
    ms_per_batch: float


@dataclass(frozen=True)
class DtypeFigures:
    dtype: str
    identical: bool  # fast == generate, free length and forced length
    peak_gpu_mib: float
    batches: list[BatchFigure]


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    args = _parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA device (--device cpu only dry-runs this script)")
    if args.agreement:
        print_agreement(args)
        return
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {device_name}, {torch.get_num_threads()} CPU threads")
    model_dir = ensure_model(args.size, root=args.models)
    images = make_images(args.images or 16)
    preprocessing = measure_preprocessing(model_dir, images, pools=args.pools)
    naive = measure_naive(model_dir, images, device=args.device)
    figures = [
        measure_dtype(
            model_dir, images, dtype=dtype, device=args.device, batches=args.batches, seconds=args.seconds
        )
        for dtype in args.dtypes
    ]
    results = {
        "device": device_name,
        "torch": torch.__version__,
        "naive_img_s": naive,
        "preprocess_img_s": preprocessing,
        "dtypes": [asdict(figure) for figure in figures],
    }
    print_table(naive, preprocessing, figures)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--batches", type=ints, default=[1, 8, 32, 64, 128])
    parser.add_argument("--dtypes", type=lambda text: text.split(","), default=["float16", "float32"])
    parser.add_argument("--pools", type=ints, default=[1, 4, 16])
    parser.add_argument("--images", type=int)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per figure")
    parser.add_argument("--models", type=Path, default=Path("/tmp/captioner-models"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="only the tensor image pipeline's agreement with the PIL path (--images, default 256 here)",
    )
    return parser.parse_args(argv)


def measure_preprocessing(model_dir: Path, images: list[BenchImage], *, pools: list[int]) -> dict[str, float]:
    """img/s of the worker's CPU side (JPEG decode at DCT scale + processor), by decode-pool size."""
    # The worker's pool threads, not torch's intra-op pool, do this work.
    with caption_model(model_dir, threads=1, dtype="float32", device="cpu") as model:
        preprocess = _preprocessor(model)
        preprocess(images[0])
        rates: dict[str, float] = {}
        for threads in pools:
            work = images * max(1, 4 * threads // len(images) + 1)
            with ThreadPoolExecutor(threads) as pool:
                started = time.perf_counter()
                list(pool.map(preprocess, work))
                rates[f"threads_{threads}"] = round(len(work) / (time.perf_counter() - started), 1)
    return rates


def measure_naive(model_dir: Path, images: list[BenchImage], *, device: str) -> float:
    """bench.naive's script, moved to the GPU as a plain script would: fp32, one image at a time."""
    rate = _naive_rate(model_dir, images, device=device)
    _release_gpu_memory()
    return rate


def _naive_rate(model_dir: Path, images: list[BenchImage], *, device: str) -> float:
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    model = model.to(device).eval()

    def caption(image: BenchImage) -> None:
        picture = Image.open(io.BytesIO(image.data)).convert("RGB")
        pixels = processor(images=picture, return_tensors="pt").pixel_values.to(device)
        with torch.inference_mode():
            ids = model.generate(
                pixel_values=pixels, do_sample=False, max_new_tokens=TOKENS, min_new_tokens=TOKENS
            )
        processor.batch_decode(ids, skip_special_tokens=True)

    caption(images[0])
    started = time.perf_counter()
    for image in images:
        caption(image)
    return round(len(images) / (time.perf_counter() - started), 2)


def measure_dtype(
    model_dir: Path,
    images: list[BenchImage],
    *,
    dtype: str,
    device: str,
    batches: list[int],
    seconds: float,
) -> DtypeFigures:
    import torch

    on_gpu = device == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with caption_model(model_dir, threads=0, dtype=dtype, device=device) as model:
        pixels = [_preprocessor(model)(image) for image in images]
        identical = all(
            decoders_agree(model, _cycle(images, size), max_new_tokens=TOKENS, min_new_tokens=TOKENS)
            for size in (8, 32)
        )
        figures = [
            _time_batch(model, _cycle(pixels, size), dtype=dtype, decoder=name, seconds=seconds)
            for size in batches
            for name in ("hf", "fast")
        ]
        peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else 0.0
    _release_gpu_memory()
    return DtypeFigures(dtype=dtype, identical=identical, peak_gpu_mib=round(peak, 1), batches=figures)


def _time_batch(
    model: CaptionModel, pixels: list[torch.Tensor], *, dtype: str, decoder: str, seconds: float
) -> BatchFigure:
    from inference_consumer.decoding import build_decoder

    model.decoder = build_decoder(decoder, model.model)  # type: ignore[arg-type]
    limits = [TOKENS] * len(pixels)

    def run() -> None:
        model.caption(pixels, max_new_tokens=limits, min_new_tokens=TOKENS)  # .cpu() inside syncs

    run()
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        run()
        runs += 1
    elapsed = time.perf_counter() - started
    return BatchFigure(
        dtype=dtype,
        decoder=decoder,
        batch=len(pixels),
        img_s=round(runs * len(pixels) / elapsed, 1),
        ms_per_batch=round(1000 * elapsed / runs, 2),
    )


def _release_gpu_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cycle(items: list[Item], size: int) -> list[Item]:
    return [items[index % len(items)] for index in range(size)]


def _preprocessor(model: CaptionModel) -> Callable[[BenchImage], torch.Tensor]:
    from core.settings import ImageSettings, load_settings

    max_pixels = load_settings(ImageSettings).max_image_pixels
    return lambda image: worker_pixels(model, image.data, max_pixels=max_pixels)


def print_agreement(args: argparse.Namespace) -> None:
    """The tensor pipeline on this device against the PIL path (bench/agreement.py), fp32 and the first
    of --dtypes, on --images generated images (default 256)."""
    from bench.agreement import agreement_images, measure_agreement

    model_dir = ensure_model(args.size, root=args.models)
    images = agreement_images(args.images or 256)
    for dtype in dict.fromkeys(["float32", args.dtypes[0]]):
        with caption_model(model_dir, threads=0, dtype=dtype, device=args.device) as model:
            agreement = measure_agreement(model, images, max_new_tokens=TOKENS)
        print(f"{dtype}: {agreement.describe()}")
        print(json.dumps({"dtype": dtype, **asdict(agreement)}))


def print_table(naive: float, preprocessing: dict[str, float], figures: list[DtypeFigures]) -> None:
    print(f"\nnaive (fp32, one image at a time, HF generate): {naive} img/s")
    print(f"worker CPU side (decode + preprocess) by pool threads: {preprocessing} img/s")
    for figure in figures:
        print(f"\n{figure.dtype}: fast == generate: {figure.identical}; peak GPU {figure.peak_gpu_mib} MiB")
        print(f"{'batch':>6} {'hf img/s':>10} {'fast img/s':>11} {'hf ms':>8} {'fast ms':>8}")
        by_batch: dict[int, dict[str, BatchFigure]] = {}
        for row in figure.batches:
            by_batch.setdefault(row.batch, {})[row.decoder] = row
        for batch, rows in by_batch.items():
            hf, fast = rows["hf"], rows["fast"]
            print(f"{batch:>6} {hf.img_s:>10} {fast.img_s:>11} {hf.ms_per_batch:>8} {fast.ms_per_batch:>8}")


if __name__ == "__main__":
    main()
