"""`make bench` on a machine with CUDA: the whole service on the GPU, and the same work in-process.

The base model in float16 on CUDA (CAPTIONER_DEVICE=cuda, CAPTIONER_DTYPE=float16, so the worker runs the
tensor image pipeline: CAPTIONER_IMAGE_PIPELINE=auto), on the benchmark's mix of photo sizes (320x240 to
4000x3000). Figures, all None where CUDA is not available:
    gpu_service_img_s    answered images/s at saturation (closed loop, GPU_CONCURRENCY in flight).
    gpu_inprocess_img_s  images/s of the same work in one process: prepare_batch (nvjpeg decode, resize,
                         normalise) and CaptionModel.caption, in batches of GPU_BATCH.
    gpu_p99_ms           p99 end-to-end latency at 65% of gpu_service_img_s (open-loop Poisson).
    gpu_name             torch.cuda.get_device_name().
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.config import ClosedLoopSize
from bench.images import BenchImage
from bench.inprocess import caption_model
from bench.measure import measure_saturation, measure_steady, steady_rate
from bench.models import ensure_model
from bench.service import ServiceSpec, running_service

if TYPE_CHECKING:
    from bench.config import BenchConfig
    from bench.load import LoadClient

GPU_BATCH = 64
GPU_CONCURRENCY = 96  # 1.5 batches of CAPTIONER_MAX_BATCH_SIZE (64) in flight
GPU_STEADY_FRACTION = 0.65  # gpu_p99_ms is taken at this share of the GPU service's saturation rate
GPU_ENV = (("CAPTIONER_DEVICE", "cuda"), ("CAPTIONER_DTYPE", "float16"))


@dataclass(frozen=True)
class GpuResult:
    name: str
    service_img_s: float
    inprocess_img_s: float
    p99_ms: float


def cuda_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def gpu_phase(
    config: BenchConfig,
    photos: list[BenchImage],
    client: LoadClient,
    bootstrap: str,
    *,
    log: Callable[[str], None],
) -> GpuResult | None:
    name = cuda_name()
    if name is None:
        return None
    log(f"GPU ({name}): in-process tensor pipeline + caption, fp16, batches of {GPU_BATCH}")
    inprocess = inprocess_img_s(config, photos)
    log(f"GPU in-process: {inprocess:.1f} img/s; starting the service on CUDA")
    spec = ServiceSpec(
        label="gpu",
        model_dir=ensure_model("base"),
        workers=1,
        worker_threads=config.worker_threads,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        extra_env=GPU_ENV,
    )
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        saturation = measure_saturation(
            client,
            service,
            photos,
            size=ClosedLoopSize(GPU_CONCURRENCY, GPU_CONCURRENCY + 4 * GPU_BATCH),
            phases=config.phases,
        )
        rate = steady_rate(saturation.img_s, GPU_STEADY_FRACTION)
        log(f"GPU service: {saturation.img_s:.1f} img/s; steady load at {rate:.1f} req/s")
        steady = measure_steady(
            client, service, photos, fraction=GPU_STEADY_FRACTION, rate=rate, phases=config.phases
        )
    return GpuResult(
        name=name,
        service_img_s=saturation.img_s,
        inprocess_img_s=inprocess,
        p99_ms=steady.latency.p99_ms,
    )


def inprocess_img_s(config: BenchConfig, photos: list[BenchImage]) -> float:
    import torch

    from inference_consumer.image_pipeline import ImagePipeline

    with caption_model(ensure_model("base"), threads=0, device="cuda", dtype="float16") as model:
        pipeline = ImagePipeline(model.processor.image_processor, device=model.device, max_pixels=10**9)
        work = [photos[index % len(photos)].data for index in range(GPU_BATCH)]
        limits = [config.max_new_tokens] * GPU_BATCH

        def run() -> None:
            pixels = pipeline.prepare_batch(work).pixels
            model.caption(list(pixels), max_new_tokens=limits, min_new_tokens=config.min_new_tokens)

        run()  # warm-up: nvjpeg handles, kernels, graphs
        runs, started = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - started < 10.0:
            run()
            runs += 1
        torch.cuda.synchronize()
        return runs * GPU_BATCH / (time.perf_counter() - started)


def main() -> int:
    """`python -m bench.gpu_phase`: the GPU figures alone, as one JSON line (bench/gpu_check.sh)."""
    import contextlib
    import json

    from bench.config import load_config
    from bench.images import make_images
    from bench.load import load_client
    from bench.service import start_broker
    from tests.support.processes import exit_on_sigterm

    exit_on_sigterm()
    config = load_config()
    ensure_model("base")
    photos = make_images(config.phases.images)
    with contextlib.ExitStack() as stack:
        bootstrap = start_broker(stack)
        client = stack.enter_context(load_client())
        result = gpu_phase(config, photos, client, bootstrap, log=print)
    figures = {
        "gpu_service_img_s": round(result.service_img_s, 1) if result else None,
        "gpu_inprocess_img_s": round(result.inprocess_img_s, 1) if result else None,
        "gpu_p99_ms": round(result.p99_ms, 1) if result else None,
        "gpu_name": result.name if result else None,
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
