"""The inference worker: a thin front that wires the feeders (consumer side, feeder.py), the batch
collector and its policy (batching.py), the model and the outcome publisher (outcomes.py), and runs the
inference loop over them."""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from confluent_kafka import Consumer, KafkaException, Producer
from prometheus_client import start_http_server

from core.broker_watch import BrokerWatch
from core.cache_keys import ModelProfile, precision_name
from core.cache_signing import CacheSigner
from core.errors import CaptionerError, ImageTooCostlyError
from core.kafka_config import (
    consumer_config,
    delivery_bound,
    producer_config,
    transaction_timeout_s,
    transactional,
)
from core.logs import LIBRDKAFKA_LOG
from core.offsets import OffsetTracker
from core.schema_registry import PREPARE_TIMEOUT_S, prepare_writers
from core.settings import CacheSettings, ImageSettings, KafkaSettings, TopicSettings, WorkerSettings
from core.signals import relayed_signals
from core.topics import OUTCOME_HEADROOM_BYTES, ensure_topics
from inference_consumer import metrics, stages
from inference_consumer.allocator import keep_freed_memory
from inference_consumer.batching import BatchCollector, BatchPolicy
from inference_consumer.cache_writer import CacheWriter, load_cache_signer
from inference_consumer.delivery import AutoCommits, DirectSink, OffsetCommits, OutcomeSink
from inference_consumer.errors import DecodersBusyError, InferenceError, WorkerFatalError
from inference_consumer.feeder import Chore, JobFeeder
from inference_consumer.image_pipeline import device_preprocessor
from inference_consumer.jobs import Job
from inference_consumer.kafka_waits import KafkaWaits
from inference_consumer.model import (
    CaptionModel,
    configure_torch_threads,
    directory_revision,
    load_caption_model,
)
from inference_consumer.observing import ConsumerLag, DeadLetterDepth, observe_queue_time
from inference_consumer.outcomes import OutcomePublisher
from inference_consumer.tracing import inference_spans, job_log_context
from inference_consumer.transactions import TransactionalSink
from inference_consumer.validation import ReplyTopicPartitions, RequestRules
from schemas.framing import SINGLE_OBJECT_CODECS, FramedCodec, RecordCodecs

log = logging.getLogger(__name__)

# The inference thread gives up the GIL inside every torch op and needs it back right after; with the
# decode pool and the feeder holding it for Python's whole default switch interval each time, a decoding
# step of a few dozen small ops would wait that long per op. A tenth of the default keeps the inference
# thread's waits short (docs/performance.md).
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class Subscription:
    name: str  # for logs: which of the worker's consumers
    config: dict[str, Any]
    topics: list[str]
    chore: Chore | None = None  # what the consumer's feeder also does, now and then


class InferenceWorker:
    def __init__(
        self,
        *,
        settings: WorkerSettings,
        kafka: KafkaSettings,
        topics: TopicSettings,
        images: ImageSettings,
        model: CaptionModel | None = None,
        cache: CacheSettings | None = None,
        codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
        load_model: Callable[[WorkerSettings], CaptionModel] = load_caption_model,
    ) -> None:
        """codecs: the record framings (core.schema_registry.record_codecs). model: one already loaded;
        else load_model loads it once the process is set up for it (threads, allocator)."""
        self.settings = settings
        self._load_model = load_model
        self._codecs = codecs
        self._cache = cache  # None: no caption-cache writes
        self._images = images
        self._kafka = kafka
        self._topics = topics
        self._model = model
        self._signer: CacheSigner | None = None
        self.stopping = threading.Event()
        self._fatal_reason: str | None = None
        self._transactions: TransactionalSink | None = None  # exactly once
        # One per process: librdkafka's lines and errors from every client, and whether a broker answers.
        self._brokers = BrokerWatch()
        self._waits = KafkaWaits(timeout_s=settings.shutdown_timeout_s, reachable=self._brokers.reachable)
        self._batching = BatchPolicy(
            max_size=settings.max_batch_size,
            budget_s=settings.batch_budget_ms / 1000,
            wait_s=settings.batch_wait_ms / 1000,
            wait_share=settings.batch_wait_share,
        )

    def run(self) -> None:
        """Serve until stop() (or SIGTERM via run_worker); then drain in-flight work and commit."""
        configure_torch_threads(self.settings.worker_threads)
        keep_freed_memory(self.settings.malloc_threshold_mb * 2**20)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port)
        self._signer = load_cache_signer(self._cache)  # before the model: a bad key file stops us at once
        # The model first: a worker that cannot load it says so whatever state the cluster is in.
        model = self._model or self._load_model(self.settings)
        ensure_topics(self._kafka, self._topics, client_log=LIBRDKAFKA_LOG)
        prepare_writers(self._written(), timeout_s=PREPARE_TIMEOUT_S)
        with self._components(model) as (feeders, outcomes, collector):
            for feeder in feeders:
                feeder.start()
            log.info("worker %s consuming %s", self.settings.worker_id, self._topics.requests)
            self._serve(model, feeders, outcomes, collector)
        log.info("worker %s stopped", self.settings.worker_id)
        if self._fatal_reason is not None:
            raise WorkerFatalError(self._fatal_reason)

    def stop(self) -> None:
        self._waits.stop()
        self.stopping.set()

    def _written(self) -> list[tuple[FramedCodec[Any], str]]:
        """What this worker writes in its own framing: replies, and caption-cache entries when on."""
        written: list[tuple[FramedCodec[Any], str]] = [(self._codecs.replies, self._topics.replies)]
        if self._cache is not None and self._cache.enabled:
            written.append((self._codecs.cache_entries, self._topics.captions))
        return written

    def _fatal(self, reason: str) -> None:
        """This worker cannot go on: it drains what it can and exits non-zero so it is restarted."""
        log.critical("stopping: %s", reason)
        self._fatal_reason = self._fatal_reason or reason
        if self._transactions is not None:  # what is not committed yet never is: it runs again elsewhere
            self._transactions.halt()
        self.stop()

    @contextlib.contextmanager
    def _components(
        self, model: CaptionModel
    ) -> Iterator[tuple[list[JobFeeder], OutcomePublisher, BatchCollector[Job]]]:
        """One producer for every outcome, and two consumers, each in a group of its own: the request
        topic's (cooperative-sticky, so a rebalance moves only what it must) and the retry tiers'
        (round-robin, which spreads each tier evenly). In one group, the assignors balance partition
        counts across all topics together, and a worker could hold retry tiers but no request partition.
        Exactly once, the producer is transactional and its transactions commit both groups' offsets."""
        settings, client_id = self.settings, f"captioner-worker-{self.settings.worker_id}"
        with contextlib.ExitStack() as stack:
            producer = self._outcome_producer(client_id)
            stack.callback(self._flush, producer)
            tracker = OffsetTracker()
            sink: OutcomeSink
            if settings.exactly_once:
                sink = self._transactions = TransactionalSink(
                    producer=producer,
                    new_producer=functools.partial(self._outcome_producer, client_id),
                    tracker=tracker,
                    waits=self._waits,
                    delivery_timeout_s=settings.delivery_timeout_s,
                    transaction_timeout_s=transaction_timeout_s(settings.delivery_timeout_s),
                    on_fatal=self._fatal,
                    transactional_id=settings.transactional_id,
                )
                self._transactions.start()
                stack.callback(self._transactions.close)  # after the consumers' last commits
            else:
                sink = DirectSink(producer)
            on_device = device_preprocessor(
                model,
                setting=settings.image_pipeline,
                max_pixels=self._images.max_image_pixels,
                max_batch=settings.max_batch_size,
                cpu_slots=settings.decode_threads,
            )
            if on_device is not None:  # entered first, so it stops after the decode pool has drained
                stack.enter_context(on_device)
            decode_pool = stack.enter_context(
                ThreadPoolExecutor(
                    # tensor mode: a pool thread mostly waits for its batch; decode_threads of them stage
                    settings.decode_threads
                    if on_device is None
                    else max(settings.decode_threads, settings.max_batch_size),
                    thread_name_prefix="image-decode",
                )
            )
            cache_writer = self._cache_writer(sink, model, tensor_pipeline=on_device is not None)
            if cache_writer is not None:
                cache_writer.start()
                stack.callback(self._close_cache_writer, cache_writer)  # before the flush
            outcomes = OutcomePublisher(
                sink=sink,
                tracker=tracker,
                topics=self._topics,
                model_name=model.name,
                worker_id=settings.worker_id,
                group_id=settings.worker_group_id,
                on_fatal=self._fatal,
                cache=cache_writer,
                replies=self._codecs.replies,
            )
            ready: queue.Queue[Job] = queue.Queue()  # the feeders keep it within _batching.backlog()
            commits: OffsetCommits = (
                self._transactions
                if self._transactions is not None
                else AutoCommits(tracker=tracker, producer=producer, waits=self._waits)
            )
            feed = functools.partial(
                JobFeeder,
                commits=commits,
                retry_topics=set(self._topics.retry_topics),
                tracker=tracker,
                outcomes=outcomes,
                ready=ready,
                backlog=self._batching.backlog,
                decode_pool=decode_pool,
                preprocess=self._preprocessor(model) if on_device is None else on_device.pixels,
                fetch_size=settings.max_batch_size,
                waits=self._waits,
                rules=RequestRules.for_topics(self._topics, reply_topic_pattern=settings.reply_topic_pattern),
                # A reply topic deleted or never there is known at once; one that does not answer
                # within the delivery bound fails the reply instead.
                reply_partitions=ReplyTopicPartitions(
                    producer=producer, timeout_s=min(5.0, settings.delivery_timeout_s)
                ),
                max_hold_s=max(self._topics.retry_delays_s, default=0.0),
                on_fatal=self._fatal,
                requests=self._codecs.requests,
            )
            feeders = []
            for subscription in self.subscriptions():
                consumer = Consumer(subscription.config)
                if self._transactions is not None:
                    self._transactions.add_group(consumer, subscription.topics)
                feeder = feed(consumer=consumer, topics=subscription.topics, chore=subscription.chore)
                stack.callback(self._close, consumer, feeder, subscription.name)
                feeders.append(feeder)
            for feeder in feeders:
                stack.callback(self._join, feeder)
                stack.callback(feeder.stopping.set)
            yield feeders, outcomes, BatchCollector(ready, self._batching)

    def _outcome_producer(self, client_id: str) -> Producer:
        """The producer of every outcome (exactly once, transactional: a new one can take a stuck one's
        transactional id over)."""
        settings = self.settings
        return Producer(
            producer_config(self._kafka, self._topics, client_id=client_id)
            # A reply topic that stops taking records holds its job, and every later job of the
            # partition uncommitted, for this long at most (docs/failure-handling.md).
            | delivery_bound(settings.delivery_timeout_s)
            # No statistics: the producer knows every reply topic named to it, so they cost more;
            # the consumers' say whether a broker answers.
            | self._brokers.client_config(statistics=False)
            # Looking up a hostile reply_topic must never create it; a dead letter is the job plus
            # our headers.
            | {
                "allow.auto.create.topics": False,
                "message.max.bytes": self._topics.max_message_bytes + OUTCOME_HEADROOM_BYTES,
            }
            | (
                transactional(settings.transactional_id, delivery_timeout_s=settings.delivery_timeout_s)
                if settings.exactly_once
                else {}
            )
        )

    def _cache_writer(
        self, sink: OutcomeSink, model: CaptionModel, *, tensor_pipeline: bool
    ) -> CacheWriter | None:
        """Entries filed under the profile this worker resolved: what changes its titles."""
        if self._signer is None:
            return None
        source = Path(self.settings.model)
        profile = ModelProfile(
            model=model.name,
            revision=model.revision or (directory_revision(source) if source.is_dir() else "unknown"),
            precision=precision_name(str(model.dtype).removeprefix("torch."), self.settings.quantize),
            image_pipeline="tensor" if tensor_pipeline else "pil",
        )
        log.info(
            "caption cache: entries signed with key %s, under model %s revision %s, %s, %s pipeline",
            self._signer.key_id,
            profile.model,
            profile.revision,
            profile.precision,
            profile.image_pipeline,
        )
        return CacheWriter(
            sink=sink,
            topic=self._topics.captions,
            signer=self._signer,
            profile=profile,
            encode=self._codecs.cache_entries.writer(self._topics.captions),
        )

    def subscriptions(self) -> list[Subscription]:
        """The request topic's consumer and the retry tiers' consumer, each in its own group. The retry
        tiers' feeder, the less busy one, also keeps the dead-letter depth gauge fresh."""
        client_id = f"captioner-worker-{self.settings.worker_id}"
        dead_letters = DeadLetterDepth(self._topics.dead_letter)
        return [
            self._subscription(
                "requests",
                f"{client_id}-requests",
                self.settings.worker_group_id,
                "cooperative-sticky",
                [self._topics.requests],
            ),
            self._subscription(
                "retries",
                f"{client_id}-retries",
                self.settings.retry_group_id,
                "roundrobin",
                self._topics.retry_topics,
                chore=dead_letters.maybe_refresh if self.settings.metrics_port else None,
            ),
        ]

    def _subscription(
        self,
        name: str,
        client_id: str,
        group_id: str,
        assignor: str,
        topics: list[str],
        *,
        chore: Chore | None = None,
    ) -> Subscription:
        # per-partition consumer lag, from librdkafka's statistics
        lag = ConsumerLag().on_stats if self.settings.metrics_port else None
        overrides: dict[str, Any] = {
            # Exactly once, offsets go only with the transactions that finish them.
            "enable.auto.commit": not self.settings.exactly_once,
            "max.poll.interval.ms": 600_000,
            "session.timeout.ms": self.settings.session_timeout_ms,
            "partition.assignment.strategy": assignor,
        } | self._brokers.client_config(stats_cb=lag)
        config = consumer_config(
            self._kafka, self._topics, client_id=client_id, group_id=group_id, **overrides
        )
        return Subscription(name=name, config=config, topics=topics, chore=chore)

    def _preprocessor(self, model: CaptionModel) -> Callable[[bytes], torch.Tensor]:
        return functools.partial(_timed_pixels, model, max_pixels=self._images.max_image_pixels)

    def _serve(
        self,
        model: CaptionModel,
        feeders: list[JobFeeder],
        outcomes: OutcomePublisher,
        collector: BatchCollector[Job],
    ) -> None:
        while not (self.stopping.is_set() or any(feeder.stopping.is_set() for feeder in feeders)):
            with stages.timed(stages.WAIT_FOR_JOBS):
                batch = collector.next_batch()
            with stages.timed(stages.PUBLISH):
                outcomes.serve()
            if batch:
                self._run_batch(model, batch, outcomes)
        self._waits.stop()
        log.info("stopped taking jobs; finishing those decoded within %.1f s", self._waits.left_s())
        for feeder in feeders:
            feeder.stopping.set()
        for feeder in feeders:
            feeder.join(self._waits.left_s())
        # Jobs already decoded run while their outcomes can still be written in time; the rest stay
        # uncommitted and run again on the partition's next owner.
        while self._waits.left_s() > 0 and self._waits.reachable() and (batch := collector.drain()):
            self._run_batch(model, batch, outcomes)
        log.info("in-flight jobs done; delivering their outcomes and committing")

    def _run_batch(self, model: CaptionModel, batch: list[Job], outcomes: OutcomePublisher) -> None:
        runnable: list[tuple[Job, torch.Tensor]] = []
        now = datetime.now(UTC)
        pool = _PoolProgress(bound_s=self.settings.decode_timeout_s)
        for job in batch:
            assert job.pixels is not None and job.request is not None
            observe_queue_time(job.request.created_at, now)
            try:
                with stages.timed(stages.WAIT_FOR_PIXELS):
                    pixels = self._pixels(job, pool.gives_up_at)
            except CaptionerError as exc:  # an invalid image, say: its own outcome, never a retry
                outcomes.failed(job, exc)
                continue
            except Exception as exc:
                with job_log_context(job):
                    log.exception("preprocessing %s failed", job.correlation_id)
                outcomes.failed(job, InferenceError("preprocessing the image failed", detail=repr(exc)))
                continue
            finally:
                pool.saw(job.pixels)
            # Checked once its pixels are ready: a deadline that passed while they decoded was answered 504.
            if job.expired(datetime.now(UTC)):
                outcomes.skipped_expired(job)
            else:
                runnable.append((job, pixels))
        if runnable:
            self._caption(model, runnable, outcomes)

    def _pixels(self, job: Job, thread_wait_until: float) -> torch.Tensor:
        """The job's decoded image, waited for at most decode_timeout_s from the moment a decode thread
        started it (a thread cannot be stopped: the structural caps of core.images are what bound it).
        A job that no thread took by thread_wait_until is taken back from the pool and retried."""
        future = job.pixels
        assert future is not None
        bound = self.settings.decode_timeout_s
        while not future.done():
            now = time.monotonic()
            if job.decode_started is None:
                if now < thread_wait_until:
                    wait([future], timeout=thread_wait_until - now)
                    continue
                if future.cancel():
                    raise DecodersBusyError(f"no decode thread was free for {bound:g} s")
                job.decode_started = now  # a thread took it this instant
            if now >= job.decode_started + bound:
                with job_log_context(job):
                    log.warning("the image of %s is still decoding after %g s", job.correlation_id, bound)
                raise ImageTooCostlyError(f"the image took longer than {bound:g} s to decode", limit=bound)
            wait([future], timeout=job.decode_started + bound - now)
        return future.result()

    def _caption(
        self, model: CaptionModel, runnable: list[tuple[Job, torch.Tensor]], outcomes: OutcomePublisher
    ) -> None:
        limits = [self._max_new_tokens(job) for job, _ in runnable]
        started = time.perf_counter()
        try:
            with inference_spans([job for job, _ in runnable]):
                titles = model.caption(
                    [pixels for _, pixels in runnable], max_new_tokens=limits, on_stage=stages.record
                )
        except Exception as exc:
            if len(runnable) > 1:
                # Split the batch so one bad input cannot sink the others.
                for item in runnable:
                    self._caption(model, [item], outcomes)
                return
            error = (
                exc
                if isinstance(exc, InferenceError)
                else InferenceError("inference failed", detail=repr(exc))
            )
            outcomes.failed(runnable[0][0], error)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._batching.captioned(len(runnable), elapsed_ms / 1000)
        log.debug(
            "captioned %d jobs in %.0f ms: %s",
            len(runnable),
            elapsed_ms,
            [(job.partition, job.offset) for job, _ in runnable],
        )
        metrics.BATCH_SIZE.observe(len(runnable))
        metrics.INFERENCE_SECONDS.observe(elapsed_ms / 1000)
        for _ in runnable:
            metrics.JOB_INFERENCE_SECONDS.observe(elapsed_ms / 1000 / len(runnable))
        with stages.timed(stages.PUBLISH), outcomes.batch():
            for (job, _), title, limit in zip(runnable, titles, limits, strict=True):
                outcomes.succeeded(job, title, inference_ms=elapsed_ms, max_new_tokens=limit)

    def _join(self, feeder: JobFeeder) -> None:
        feeder.join(self._waits.left_s())

    def _close(self, consumer: Consumer, feeder: JobFeeder, name: str) -> None:
        """A consumer is closed once its feeder has stopped polling it; one still polling when the stop's
        time is spent is left to the process's exit (closing it under its poll would fail the feeder)."""
        if feeder.alive():
            log.warning("the %s feeder is still running; its consumer is not closed", name)
            return
        self._waits.close(consumer, name=name)

    def _close_cache_writer(self, cache_writer: CacheWriter) -> None:
        cache_writer.close(self._waits.left_s())

    def _flush(self, producer: Producer) -> None:
        try:
            remaining = self._waits.flush(producer)
        except KafkaException as exc:  # a producer in a fatal state (exactly once: fenced, or not allowed)
            log.warning("outcome records not delivered at shutdown (%s); their jobs will run again", exc)
            return
        if remaining:
            log.warning("%d outcome records not delivered at shutdown; their jobs will run again", remaining)

    def _max_new_tokens(self, job: Job) -> int:
        requested = job.request.max_new_tokens if job.request else None
        return min(requested or self.settings.max_new_tokens, self.settings.max_new_tokens)


@dataclass
class _PoolProgress:
    """When a batch gives up on its jobs that no decode thread has started: `bound_s` after the batch
    began, or after the pool last finished one of its images, whichever is later. A pool busy with
    ordinary images keeps finishing them; one whose every thread is held by images past their bound
    finishes none."""

    bound_s: float
    gives_up_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.gives_up_at = time.monotonic() + self.bound_s

    def saw(self, pixels: Future[torch.Tensor] | None) -> None:
        if pixels is not None and pixels.done() and not pixels.cancelled():
            self.gives_up_at = time.monotonic() + self.bound_s


def _timed_pixels(model: CaptionModel, image: bytes, *, max_pixels: int) -> torch.Tensor:
    """An image's decoding and preprocessing on the decode pool, timed (failures included)."""
    with metrics.DECODE_SECONDS.time():
        return model.pixels(image, max_pixels=max_pixels, on_stage=stages.record)


def run_worker(
    *,
    settings: WorkerSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    images: ImageSettings,
    cache: CacheSettings,
    codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
    load_model: Callable[[WorkerSettings], CaptionModel] = load_caption_model,
) -> None:
    """Run a worker in this process until SIGTERM or SIGINT, with the settings its entry point read."""
    worker = InferenceWorker(
        settings=settings,
        kafka=kafka,
        topics=topics,
        images=images,
        cache=cache,
        codecs=codecs,
        load_model=load_model,
    )

    def on_signal(signum: int) -> None:
        log.info("signal %d: finishing in-flight work", signum)
        worker.stop()

    with relayed_signals(on_signal):
        worker.run()
