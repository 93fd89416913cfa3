"""Where a worker's time goes: perf_counter seconds summed per stage, served as the
captioner_worker_stage_seconds_total counter (README, Performance, for the breakdown `make bench` prints
from it). Timed per batch or per job, never per token, so it costs a few microseconds a batch.

The inference thread is always in one of its stages (waiting for jobs, waiting for an image's pixels,
staging, the image encoder, the prefill, the decoding steps, detokenizing, publishing outcomes): their
sums over a window, against its wall time, say where that thread spent it; what they miss is the loop's
own bookkeeping. The decode pool's threads run beside it, so their stages (image decode, preprocess)
add up to more than the window when several images decode at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from inference_consumer import metrics

StageSink = Callable[[str, float], None]
"""Takes (stage, seconds) once a stage ends."""

WAIT_FOR_JOBS = "wait_for_jobs"
WAIT_FOR_PIXELS = "wait_for_pixels"
STAGING = "staging"  # the batch stacked and moved to the model's device and dtype
IMAGE_ENCODER = "image_encoder"  # the vision encoder and visual projection
PREFILL = "prefill"  # image tokens + BOS through the text decoder
DECODING_STEPS = "decoding_steps"  # every later token, vocabulary projections included
GENERATE = "generate"  # CAPTIONER_DECODER=hf: model.generate as a whole
DETOKENIZE = "detokenize"
PUBLISH = "publish"  # outcomes produced, delivery reports served
IMAGE_DECODE = "image_decode"  # decode pool
PREPROCESS = "preprocess"  # decode pool
INFERENCE_THREAD_STAGES = (
    WAIT_FOR_JOBS,
    WAIT_FOR_PIXELS,
    STAGING,
    IMAGE_ENCODER,
    PREFILL,
    DECODING_STEPS,
    GENERATE,
    DETOKENIZE,
    PUBLISH,
)
DECODE_POOL_STAGES = (IMAGE_DECODE, PREPROCESS)
STAGES = INFERENCE_THREAD_STAGES + DECODE_POOL_STAGES

_COUNTERS = {stage: metrics.STAGE_SECONDS.labels(stage=stage) for stage in STAGES}


def record(stage: str, seconds: float) -> None:
    """A StageSink into the worker's counter."""
    _COUNTERS[stage].inc(seconds)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _COUNTERS[stage].inc(time.perf_counter() - started)
