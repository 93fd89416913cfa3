"""`make bench` (or `.venv/bin/python -m bench`): naive in-process captioning against the real service.

How to run
    make bench                    # full run (its duration on the build machine: docs/performance.md)
    BENCH_QUICK=1 make bench      # shorter: fewer images, shorter load phases, same keys
    WORKERS=2 make bench          # as `make run`: workers split the cores (CAPTIONER_WORKER_THREADS)
Settings read here: CAPTIONER_MAX_NEW_TOKENS (default 20) and BENCH_MIN_NEW_TOKENS (default: the max, so
every caption is forced to its full length and costs fixed work); both go to the naive loop and to the
service processes alike (its workers run as the harness runs them: tests/support/harness_worker.py).
KAFKA_BOOTSTRAP_SERVERS uses that cluster instead of the local broker (infra/kafka/broker.sh start;
stopped at the end only if this run started it). Every other CAPTIONER_*
variable (CAPTIONER_DECODER, CAPTIONER_MAX_BATCH_SIZE, ...) passes through to the service unchanged;
CAPTIONER_API_REQUEST_TIMEOUT_S defaults to 120 s here (not 30), so that at saturation, on a slow or busy
machine, a request waiting behind a batch is measured, not turned into a 504.

What it does, on this machine, in one run
    Models: random-weight GIT directories made by captioner.model_factory, cached in .local/models/{base,tiny}
    (base has the exact shapes and cost of microsoft/git-base-textcaps). Images: photo-like JPEGs made
    locally, 320x240 to 4000x3000 (bench/images.py). The service is started as `make run` starts it
    (`captioner topics create`, WORKERS x `captioner worker`, as the harness runs it, `captioner api`), with
    topic names, consumer group and port of this run's own, and stopped with SIGTERM (then a wait) at the
    end, even on failure. HTTP load comes from a separate client process (bench/load.py), to 127.0.0.1
    only. Progress goes to stderr; service logs to .local/bench/<run id>/.

What each number means (the JSON object on the last line of stdout)
    naive_img_s      images/s of a plain in-process loop, one image at a time: JPEG bytes -> PIL ->
                     processor -> HF `generate` -> decode (base model, all cores).
    service_img_s    images/s of the service at saturation: a closed loop keeping 1.5 batches per worker in
                     flight over HTTP (BENCH_BATCH_SIZE: by default 16, the batch the worker's time budget
                     gives GIT-base on 2 CPU cores -> 24), so the next batch is always queued; counted over
                     whole answered batches after the first, once the same loop has run 40 s unmeasured
                     (10 s quick: the workers' arrival rate, a 20 s average, settles after the quiet spell
                     before), and until it has enough answers (the drain after is not measured).
    service_img_s_repeat50
                     images/s of the same service, same closed loop, with the caption cache in use: every
                     other request sends one of the photos already captioned (answered from the cache, no
                     inference), the others a photo never sent before (the same picture under new bytes: a
                     JPEG comment segment, so the same work). Every other phase sends X-Captioner-Cache:
                     bypass, so each of its requests reaches a worker (entries are still written).
    ratio            service_img_s / naive_img_s.
    p99_ms_30, p99_ms_65, p99_ms_90
                     client end-to-end latency (99th percentile) at steady loads below saturation: one
                     open-loop Poisson run each at 30%, 65% and 90% of service_img_s, in that order, the
                     same images; latency counts from each request's due time (no coordinated omission).
    p50_ms, p95_ms, p99_ms
                     the 65% run's p50, p95 and p99 (the one steady run of earlier versions).
    idle_ms          idle latency of one image: the median end-to-end time of the sequential requests of
                     the overhead measurement (1024x768 image, base model). The target at 65% load is
                     p99_ms_65 <= 3 x idle_ms.
    overhead_p50_ms  what the service adds to one request: the median, over sequential requests on the idle
                     base-model service (1024x768 image), of end-to-end latency minus the worker's own
                     inference_ms for that request, less the median in-process time of the worker's decode
                     (DCT draft) + preprocess of the same image, each in-process run just before one
                     request. What remains is HTTP, Kafka, the worker's polling and queueing, the API's
                     checks and any batching wait. The model's time is taken from the same request because
                     the same caption timed in two processes differs from run to run by more than the
                     overhead itself (docs/performance.md); the table also shows that cross-check
                     (end-to-end minus the whole in-process run).
    capacity_rps     transport capacity: the highest offered rate (step-up, open loop, a few seconds a step,
                     one 320x240 image) that the tiny-model service sustains with 0 errors, its answers
                     keeping pace with arrivals (answers/s over their own span >= 95% of the offered rate,
                     90% in quick mode). The tiny worker runs 1 torch thread unless CAPTIONER_WORKER_THREADS
                     is set: a model that small gains nothing from intra-op threads, whose OpenMP barriers
                     would spin against the API, broker and client for the same cores.
    worker_rss_mb    peak resident memory (VmRSS) of the worker process(es), summed, during the base run.
    uss_mb_per_worker  private memory (USS: pages no other process maps) of each of two base-model workers
                     forked from one process (CAPTIONER_WORKER_PROCESSES=2, as `WORKERS=2 make run` starts
                     them), splitting the cores, sampled while they serve a closed loop at saturation: the
                     larger worker's peak. The memory-mapped weights and the imports they share with the
                     forking process do not count; a phase of its own.
    uss_mb_fork_parent  the forking process's peak USS in that phase: what it holds that neither worker
                     maps any more (its pages both workers have copied). A host's memory for N such workers
                     is about this, the shared pages once, and N x uss_mb_per_worker.
    decoder_identical  the fast decoder's token ids equal HF `generate`'s on the base model, for a batch of
                     4 images and one of 12 (whose steps run as 16 rows where
                     CAPTIONER_PAD_DECODING_STEPS_FROM applies), free-length and forced-length (in-process).
    service_img_s_eos, idle_ms_eos, overhead_p50_ms_eos, capacity_rps_eos, api_cpu_ms_per_request_eos
                     the same figures with CAPTIONER_DELIVERY_GUARANTEE=exactly_once (one Kafka transaction
                     per commit): the base service again right after the base run (idle run, then
                     saturation), the tiny one right after the capacity run; null where the environment
                     already sets exactly_once (then every service of the run is, and there is nothing to
                     compare). The run's own services otherwise run at least once, the default.
    eos_saturation_ratio, eos_capacity_ratio
                     service_img_s_eos / service_img_s and capacity_rps_eos / capacity_rps (1: exactly once
                     costs nothing); a table shows every figure under both guarantees side by side.
    gpu_service_img_s, gpu_inprocess_img_s, gpu_p99_ms, gpu_name
                     only where CUDA is available (null elsewhere): the service on the GPU (base model,
                     fp16, tensor image pipeline) over the same photo mix, and the same work in-process
                     (bench/gpu_phase.py).
The tables also show where an idle request's time goes (from the API's latency_ms and the worker's
inference_ms in each answer), each capacity step (client CPU and lag show the client is not the limit),
and error counts by HTTP status.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace

from rich.console import Console

from bench.api_floor import measure_api_floor
from bench.bf16 import DTYPE, Bf16Result
from bench.breakdown import broker_pid
from bench.ceiling import workers_note
from bench.config import BenchConfig, load_config
from bench.exactly_once import EXACTLY_ONCE, guarantee_run, with_guarantee
from bench.gpu_phase import gpu_phase
from bench.images import BenchImage, make_image, make_images
from bench.inprocess import (
    DecoderCheck,
    InProcessRun,
    check_decoders,
    count_same_titles,
    measure_ceiling,
    measure_in_process,
    reference_runner,
)
from bench.load import ClosedLoop, LoadClient, load_client
from bench.measure import (
    API_COST_RATE,
    ApiCost,
    CapacityResult,
    IdleResult,
    RepeatResult,
    SaturationResult,
    SteadyResult,
    measure_api_cost,
    measure_capacity,
    measure_idle,
    measure_repeat50,
    measure_saturation,
    measure_steady,
    steady_rate,
    target,
)
from bench.models import ensure_model
from bench.naive import NaiveResult, run_naive
from bench.report import BenchResults, print_report
from bench.service import BROKER_SH, Service, ServiceSpec, running_service, start_broker
from bench.stats import median
from bench.warmup import warm_up_broker
from core.cpu_features import bf16_refusal, host_cpu_flags
from tests.support.processes import ProcessById, children_of, exit_on_sigterm, rss_peak, uss_peaks

WARMUP_PAYLOAD_BYTES = 64 * 1024  # about a small photo's JPEG
MEMORY_WORKERS = 2  # uss_mb_per_worker: workers sharing one host
DECODER_CHECK_PADDED = 12  # a batch whose decoding steps are padded to 16 rows on AVX-512

progress = Console(stderr=True)


def log(message: str) -> None:
    progress.log(message, highlight=False)


@dataclass(frozen=True)
class ImageSets:
    photos: list[BenchImage]  # the naive and service throughput sets
    overhead: BenchImage  # idle latency vs in-process
    capacity: BenchImage  # the small image of the transport-capacity run
    # a batch of 4, and one of 12 (steps padded to 16 rows on AVX-512: CAPTIONER_PAD_DECODING_STEPS_FROM)
    decoder_checks: tuple[list[BenchImage], ...]

    @classmethod
    def make(cls, count: int) -> ImageSets:
        photos = make_images(count)
        picks = [photos[round(index * (len(photos) - 1) / 3)] for index in range(4)]
        return cls(
            photos=photos,
            overhead=make_image(1024, 768, seed=100),
            capacity=make_image(320, 240, seed=200),
            decoder_checks=(picks, list(itertools.islice(itertools.cycle(photos), DECODER_CHECK_PADDED))),
        )


@dataclass(frozen=True)
class BaseServiceResults:
    idle: IdleResult
    saturation: SaturationResult
    steady: tuple[SteadyResult, ...]
    repeat50: RepeatResult
    worker_rss_mb: float


def in_process_phase(config: BenchConfig, images: ImageSets) -> tuple[DecoderCheck, NaiveResult]:
    base = ensure_model("base")
    sizes = " and ".join(str(len(batch)) for batch in images.decoder_checks)
    log(f"in-process: fast decoder vs HF generate, batches of {sizes} (base model)")
    decoders = check_decoders(
        base,
        images.decoder_checks,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        threads=config.worker_threads,
    )
    log(f"naive: HF generate, one image at a time, {len(images.photos)} photos")
    naive = run_naive(
        base,
        images.photos,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        budget_s=config.phases.naive_budget_s,
    )
    log(f"naive: {naive.img_s:.3f} img/s")
    return decoders, naive


def batch_phase(config: BenchConfig, images: ImageSets) -> InProcessRun:
    log(
        f"in-process: sgemm rate on the worker's threads; one batch of {config.batch_size} photos through "
        "the worker's model code, alone, each run followed by its matrix kernels replayed alone (ceiling)"
    )
    run = measure_in_process(
        ensure_model("base"),
        images.photos,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        threads=config.worker_threads,
        batch=config.batch_size,
        processes=config.workers,
    )
    ceiling, batch = run.ceiling, run.batch
    log(
        f"{ceiling.machine.describe()}: {ceiling.machine.sgemm_gflops:.0f} GFLOP/s, ceiling "
        f"{ceiling.img_s:.2f} img/s ({ceiling.kernels.distinct} distinct of {ceiling.kernels.calls} kernel "
        f"calls); in-process {batch.img_s:.3f} img/s ({batch.seconds:.2f} s a batch"
        f"{workers_note(batch.processes)})"
    )
    return run


def service_spec(config: BenchConfig, label: str) -> ServiceSpec:
    return ServiceSpec(
        label=label,
        model_dir=ensure_model("base" if label == "base" else "tiny"),
        workers=config.workers,
        worker_threads=config.worker_threads if label == "base" else config.capacity_worker_threads,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
    )


def idle_phase(config: BenchConfig, images: ImageSets, client: LoadClient, service: Service) -> IdleResult:
    log("service: idle sequential requests, each after the same work in-process (overhead)")
    with reference_runner(
        service.spec.model_dir,
        images.overhead,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        threads=config.worker_threads,
    ) as reference:
        return measure_idle(
            client, service, images.overhead, samples=config.phases.overhead_samples, reference=reference
        )


def saturation_phase(
    config: BenchConfig, images: ImageSets, client: LoadClient, service: Service
) -> SaturationResult:
    """The photo mix in a closed loop on the base service, with where the time went (the local broker's CPU
    included)."""
    return measure_saturation(
        client,
        service,
        images.photos,
        size=config.saturation_loop,
        phases=config.phases,
        broker_pid=broker_pid(BROKER_SH),
    )


def base_service_phase(
    config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str
) -> BaseServiceResults:
    log("service (base model): starting broker topics, worker(s), API")
    spec = service_spec(config, "base")
    with (
        running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service,
        rss_peak(service.workers) as rss,
    ):
        idle = idle_phase(config, images, client, service)
        log(f"service: saturation, closed loop at {config.saturation_concurrency} in flight")
        saturation = saturation_phase(config, images, client, service)
        log(f"service: {saturation.img_s:.3f} img/s")
        steady = tuple(
            steady_phase(
                config, images, client, service, saturation_img_s=saturation.img_s, fraction=fraction
            )
            for fraction in config.phases.steady_fractions
        )
        log("service: saturation again, every other image one already captioned (caption cache)")
        repeat50 = measure_repeat50(
            client, service, images.photos, size=config.saturation_loop, phases=config.phases
        )
        log(f"service: {repeat50.saturation.img_s:.3f} img/s, {repeat50.cached} answers from the cache")
        log("service (base model): stopping")
    return BaseServiceResults(
        idle=idle,
        saturation=saturation,
        steady=steady,
        repeat50=repeat50,
        worker_rss_mb=rss.peak_mb,
    )


def guarantee_base_phase(
    config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str, guarantee: str
) -> tuple[IdleResult, SaturationResult]:
    """The base service under `guarantee`: its idle latency (as the base run's) and its saturation."""
    spec = with_guarantee(service_spec(config, "base"), guarantee)
    log(f"service (base model, {guarantee}): idle, then saturation")
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        idle = idle_phase(config, images, client, service)
        saturation = measure_saturation(
            client, service, images.photos, size=config.saturation_loop, phases=config.phases
        )
    log(f"service ({guarantee}): idle {median(idle.e2e_ms):.0f} ms, {saturation.img_s:.3f} img/s")
    return idle, saturation


def exactly_once_base_phase(
    config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str
) -> tuple[IdleResult, SaturationResult] | None:
    """Right after the base run, the same service with exactly once; None where the run's own already is."""
    if config.exactly_once:
        log("exactly once: not compared, CAPTIONER_DELIVERY_GUARANTEE=exactly_once: every service runs it")
        return None
    return guarantee_base_phase(config, images, client, bootstrap, EXACTLY_ONCE)


def exactly_once_capacity_phase(
    config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str
) -> tuple[CapacityResult, ApiCost] | None:
    """Right after the capacity run, the same with exactly once; None where the run's own already is."""
    if config.exactly_once:
        return None
    return capacity_phase(config, images, client, bootstrap, guarantee=EXACTLY_ONCE)


@dataclass(frozen=True)
class MemoryResult:
    worker_uss_mb: list[float]  # each forked worker's peak USS
    parent_uss_mb: float  # the peak USS of the process that forked them: what they share is its


def memory_phase(config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str) -> MemoryResult:
    """Two base-model workers splitting the cores, as on a host that runs several, forked from one process
    as `WORKERS=2 make run` starts them: each one's peak USS while they serve a closed loop at saturation
    (1.5 of the base run's batches in flight, until twice that many have been answered), and the forking
    process's."""
    log(f"memory: {MEMORY_WORKERS} base-model workers forked from one process, their USS at saturation")
    spec = replace(
        service_spec(config, "base"),
        label="memory",
        workers=MEMORY_WORKERS,
        worker_threads=max(1, (os.cpu_count() or 1) // MEMORY_WORKERS),
        forked=True,
    )
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        [parent] = service.workers
        workers = [ProcessById(pid) for pid in children_of(parent.pid)]
        with uss_peaks(workers) as uss, uss_peaks([parent]) as parent_uss:
            client.run(
                ClosedLoop(
                    target=target(service, images.photos),
                    concurrency=config.saturation_concurrency,
                    min_s=0.0,
                    min_completions=2 * config.saturation_concurrency,
                    max_s=max(120.0, 4 * config.phases.saturation_s),
                )
            )
            service.check_alive()
    log(
        "memory: USS peaks "
        + ", ".join(f"{peak:.0f} MB" for peak in uss.peaks_mb)
        + f"; the forking process {parent_uss.peak_mb:.0f} MB"
    )
    return MemoryResult(worker_uss_mb=uss.peaks_mb, parent_uss_mb=parent_uss.peak_mb)


def bf16_phase(
    config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str
) -> Bf16Result | None:
    """The base service again in bfloat16, where the CPU has it (None elsewhere: the worker refuses it)."""
    refusal = bf16_refusal(host_cpu_flags())
    if refusal is not None:
        log(f"bf16: not run, {refusal}")
        return None
    base = ensure_model("base")
    log("bf16: the model's kernels in bfloat16 (ceiling), then its titles against float32's")
    ceiling = measure_ceiling(
        base,
        images.overhead,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        threads=config.worker_threads,
        batch=config.batch_size,
        dtype=DTYPE,
        processes=config.workers,
    )
    same = count_same_titles(
        base, images.photos, max_new_tokens=config.max_new_tokens, threads=config.worker_threads, dtype=DTYPE
    )
    log(f"bf16: ceiling {ceiling.img_s:.2f} img/s; {same} of {len(images.photos)} titles as in float32")
    spec = replace(service_spec(config, "base"), label="bf16", extra_env=(("CAPTIONER_DTYPE", DTYPE),))
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        saturation = measure_saturation(
            client, service, images.photos, size=config.saturation_loop, phases=config.phases
        )
    log(f"bf16: {saturation.img_s:.3f} img/s")
    return Bf16Result(ceiling=ceiling, saturation=saturation, same_titles=same, photos=len(images.photos))


def steady_phase(
    config: BenchConfig,
    images: ImageSets,
    client: LoadClient,
    service: Service,
    *,
    saturation_img_s: float,
    fraction: float,
) -> SteadyResult:
    rate = steady_rate(saturation_img_s, fraction)
    log(f"service: steady load at {fraction:.0%}, {rate:.2f} req/s")
    steady = measure_steady(
        client, service, images.photos, fraction=fraction, rate=rate, phases=config.phases
    )
    latency = steady.latency
    log(f"  p50/p95/p99 {latency.p50_ms:.0f}/{latency.p95_ms:.0f}/{latency.p99_ms:.0f} ms")
    return steady


def capacity_phase(
    config: BenchConfig,
    images: ImageSets,
    client: LoadClient,
    bootstrap: str,
    *,
    guarantee: str | None = None,  # None: the environment's CAPTIONER_DELIVERY_GUARANTEE
) -> tuple[CapacityResult, ApiCost]:
    spec = service_spec(config, "tiny")
    spec = spec if guarantee is None else with_guarantee(spec, guarantee)
    floor = math.nan
    if guarantee is None:
        log(f"capacity: a bare aiohttp server's CPU time per request at {API_COST_RATE:g} req/s")
        floor = measure_api_floor(
            client, images.capacity, duration_s=2 * config.phases.capacity_step_s, rate=API_COST_RATE
        )
        log(f"capacity: bare aiohttp server {floor:.2f} CPU ms/request")
    log(f"capacity (tiny model{f', {guarantee}' if guarantee else ''}): starting service")
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        log(f"capacity: the API's CPU time per request at {API_COST_RATE:g} req/s")
        api_cost = measure_api_cost(
            client, service, images.capacity, duration_s=2 * config.phases.capacity_step_s
        )
        api_cost = replace(api_cost, floor_cpu_ms_per_request=floor)
        log(f"capacity: API {api_cost.cpu_ms_per_request:.2f} CPU ms/request")
        log(f"capacity: step-up {config.phases.capacity_step_s:g} s steps")
        capacity = measure_capacity(client, service, images.capacity, phases=config.phases)
        log(f"capacity: {capacity.capacity_rps:.0f} req/s; stopping")
    return capacity, api_cost


def run(config: BenchConfig) -> BenchResults:
    started = time.perf_counter()
    log(f"run {config.run_id} ({'quick' if config.quick else 'full'}); models in .local/models")
    ensure_model("base")
    ensure_model("tiny")
    images = ImageSets.make(config.phases.images)
    decoders, naive = in_process_phase(config, images)
    in_process = batch_phase(config, images)  # after the naive loop: with the worker's malloc thresholds
    with ExitStack() as stack:
        bootstrap = start_broker(stack)
        log("broker warm-up: produce+fetch round trips on a scratch topic")
        warmup = warm_up_broker(
            bootstrap,
            topic=f"{config.run_id}-warmup",
            payload_bytes=WARMUP_PAYLOAD_BYTES,
        )
        log(warmup.describe())
        client = stack.enter_context(load_client())
        base = base_service_phase(config, images, client, bootstrap)
        eos_base = exactly_once_base_phase(config, images, client, bootstrap)
        capacity, api_cost = capacity_phase(config, images, client, bootstrap)
        eos_capacity = exactly_once_capacity_phase(config, images, client, bootstrap)
        memory = memory_phase(config, images, client, bootstrap)
        bf16 = bf16_phase(config, images, client, bootstrap)
        gpu = gpu_phase(config, images.photos, client, bootstrap, log=log)
    return BenchResults(
        config=config,
        images=images.photos,
        overhead_image=images.overhead,
        capacity_image=images.capacity,
        naive=naive,
        decoders=decoders,
        warmup=warmup,
        idle=base.idle,
        saturation=base.saturation,
        steady=base.steady,
        repeat50=base.repeat50,
        capacity=capacity,
        api_cost=api_cost,
        worker_rss_mb=base.worker_rss_mb,
        worker_uss_mb=memory.worker_uss_mb,
        fork_parent_uss_mb=memory.parent_uss_mb,
        ceiling=in_process.ceiling,
        batch=in_process.batch,
        wall_s=time.perf_counter() - started,
        gpu=gpu,
        bf16=bf16,
        exactly_once=guarantee_run(EXACTLY_ONCE, eos_base, eos_capacity),
    )


def main() -> int:
    exit_on_sigterm()
    config = load_config()
    results = run(config)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "summary.json").write_text(json.dumps(results.summary(), indent=2) + "\n")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
