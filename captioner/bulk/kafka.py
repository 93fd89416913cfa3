"""Captioning straight through Kafka: each image is a CaptionRequest on the request topic, answered on a
reply topic of this run's own (one partition, created at the start, deleted at the end), so a bulk job
holds no HTTP connections and takes no API instance's in-flight slots.

Two threads of our own talk to librdkafka: one serves the producer's delivery reports, one reads the
reply partition; both hand what they learn to the event loop, which alone owns the waiting table.

A run that stops early (Ctrl-C, an error) stops sending first, then delivers or drops what librdkafka
still holds, and only then deletes its reply topic; the jobs already on the request topic are counted
(`left_in_flight`), since the workers will still caption them and their replies have nowhere to go.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from captioner.bulk.files import ImageFile
from captioner.bulk.results import TIMEOUT, Result
from core.consuming import poll_batch
from core.kafka_config import READ_COMMITTED, client_config, producer_config
from core.logs import LIBRDKAFKA_LOG
from core.settings import KafkaSettings, TopicSettings
from core.topics import TopicSpec, create_topics, delete_topics
from schemas import CaptionerError, CaptionReply, CaptionRequest, ReplyStatus
from schemas.codec import utc_now
from schemas.framing import SINGLE_OBJECT_CODECS, FramedCodec, Framing, RecordCodecs

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection retries and the like): quiet unless the CLI is asked for them.

_REPLY_RETENTION_MS = 3_600_000
# A reply may be on its way when the deadline passes; the worker never starts a job after it.
_REPLY_GRACE_S = 5.0
_POLL_S = 0.1
_FLUSH_S = 5.0


# A run's clients (and the group its assign()-only reply consumer names) start with this; the ACLs
# (captioner/acls.py) grant by it, as they grant the reply topics by reply_topic_prefix.
BULK_CLIENT_PREFIX = "captioner-bulk-"


def reply_topic_prefix(topics: TopicSettings) -> str:
    return f"{topics.replies}.bulk."


def reply_topic_name(topics: TopicSettings, run_id: str) -> str:
    return f"{reply_topic_prefix(topics)}{run_id}"


@dataclass
class _Waiting:
    """Correlation id -> the future of the image waiting for it, and the ids told RETRYING."""

    futures: dict[str, asyncio.Future[CaptionReply | KafkaError]] = field(default_factory=dict)
    retrying: set[str] = field(default_factory=set)
    # Published and not yet answered, failed or timed out: a job a worker may still take.
    in_flight: set[str] = field(default_factory=set)

    def settle(self, replies: list[CaptionReply]) -> None:
        for reply in replies:
            if reply.status is not ReplyStatus.RETRYING:
                self.in_flight.discard(reply.correlation_id)
            future = self.futures.get(reply.correlation_id)
            if future is None or future.done():
                continue  # a duplicate, or an id this run no longer waits for
            if reply.status is ReplyStatus.RETRYING:
                self.retrying.add(reply.correlation_id)
            else:
                future.set_result(reply)

    def undelivered(self, correlation_id: str, error: KafkaError) -> None:
        self.in_flight.discard(correlation_id)
        future = self.futures.get(correlation_id)
        if future is not None and not future.done():
            future.set_result(error)


class KafkaBackend:
    """`async with KafkaBackend(...) as backend: await backend.caption(image)`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        *,
        timeout_s: float,
        run_id: str | None = None,
        admin_timeout_s: float = 15.0,
        codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
    ) -> None:
        """codecs: replies are read in either framing. Requests are written single-object, so that the
        replies to this run's own reply topic are too: in the registry's framing, every run would leave a
        subject of its own (`<reply topic>-value`) in the registry."""
        self._requests = codecs.requests
        self._replies = codecs.replies
        self._kafka = kafka
        self._topics = topics
        self._timeout_s = timeout_s
        self._admin_timeout_s = admin_timeout_s
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.reply_topic = reply_topic_name(topics, self.run_id)
        self._waiting = _Waiting()
        # Held around each hand-over to librdkafka: once `_sending_stopped` is set under it, no job is
        # sent again, so the reply topic can go.
        self._send_lock = threading.Lock()
        self._sending_stopped = False
        self.left_in_flight = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> KafkaBackend:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._create_reply_topic)
        try:
            await asyncio.to_thread(self._start_clients)
        except BaseException:
            await asyncio.to_thread(self._delete_reply_topic)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self._close)
        # The close's own delivery reports reached the loop before this resumed (call_soon order).
        self.left_in_flight = len(self._waiting.in_flight)

    async def caption(self, image: ImageFile) -> Result:
        loop = asyncio.get_running_loop()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[CaptionReply | KafkaError] = loop.create_future()
        self._waiting.futures[correlation_id] = future
        try:
            refused = await asyncio.to_thread(self._publish, correlation_id, image)
            if refused is not None:
                return refused
            outcome = await asyncio.wait_for(future, self._timeout_s + _REPLY_GRACE_S)
        except TimeoutError:
            # Past its deadline no worker starts it; a reply on its way is dropped with the topic.
            self._waiting.in_flight.discard(correlation_id)
            retried = correlation_id in self._waiting.retrying
            message = f"no reply within {self._timeout_s:g} s" + (" (the job was being retried)" * retried)
            return Result.failed(image.path, error=TIMEOUT, message=message, id=correlation_id)
        finally:
            self._waiting.futures.pop(correlation_id, None)
            self._waiting.retrying.discard(correlation_id)
        return _result(image.path, correlation_id, outcome)

    def _publish(self, correlation_id: str, image: ImageFile) -> Result | None:
        """Encode and hand the record to librdkafka (which sends it from its own threads); None when it
        took it, else the failure. Blocking only on the encoding: runs in a thread, which goes on even
        when the awaiting task is cancelled, hence the lock."""
        assert self._producer is not None and self._loop is not None
        request = CaptionRequest(
            correlation_id=correlation_id,
            image=image.data,
            content_type=image.content_type,
            reply_topic=self.reply_topic,
            reply_partition=0,
            deadline=utc_now() + timedelta(seconds=self._timeout_s),
        )
        try:
            value = self._requests.encode(request, topic=self._topics.requests, framing=Framing.SINGLE_OBJECT)
        except CaptionerError as exc:
            return Result.failed(image.path, error=exc.code, message=exc.message)
        with self._send_lock:
            if self._sending_stopped:
                return Result.failed(image.path, error="not_published", message="the run was stopping")
            # Counted before librdkafka has it, so that its delivery report always comes after.
            self._loop.call_soon_threadsafe(self._waiting.in_flight.add, correlation_id)
            try:
                self._producer.produce(
                    self._topics.requests,
                    key=correlation_id.encode(),
                    value=value,
                    on_delivery=lambda error, _message: self._on_delivery(correlation_id, error),
                )
            except (BufferError, KafkaException) as exc:
                self._loop.call_soon_threadsafe(self._waiting.in_flight.discard, correlation_id)
                return Result.failed(
                    image.path, error="not_published", message=f"Kafka did not take the job: {exc}"
                )
        return None

    def _on_delivery(self, correlation_id: str, error: KafkaError | None) -> None:
        if error is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._waiting.undelivered, correlation_id, error)

    def _create_reply_topic(self) -> None:
        spec = TopicSpec(self.reply_topic, partitions=1, retention_ms=_REPLY_RETENTION_MS)
        create_topics(
            self._kafka,
            [spec],
            self._topics.max_message_bytes,
            timeout_s=self._admin_timeout_s,
            client_log=LIBRDKAFKA_LOG,
        )

    def _delete_reply_topic(self) -> None:
        try:
            delete_topics(
                self._kafka, [self.reply_topic], timeout_s=self._admin_timeout_s, client_log=LIBRDKAFKA_LOG
            )
        except KafkaException as exc:
            log.warning("could not delete this run's reply topic %s: %s", self.reply_topic, exc)

    def _start_clients(self) -> None:
        client_id = f"{BULK_CLIENT_PREFIX}{self.run_id}"
        config = producer_config(self._kafka, self._topics, client_id=client_id, linger_ms=2)
        self._producer = Producer(config | {"logger": LIBRDKAFKA_LOG})
        self._consumer = Consumer(self._reply_consumer_config(client_id))
        # The topic is this run's alone and new: every reply on it is one of ours.
        self._consumer.assign([TopicPartition(self.reply_topic, 0, OFFSET_BEGINNING)])
        loops = (("bulk-deliveries", self._serve_deliveries), ("bulk-replies", self._read_replies))
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _reply_consumer_config(self, client_id: str) -> dict[str, Any]:
        # librdkafka wants a group id even for assign(); nothing is ever committed under it.
        return (
            client_config(self._kafka, client_id=client_id)
            | READ_COMMITTED
            | {
                "group.id": client_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "logger": LIBRDKAFKA_LOG,
            }
        )

    def _serve_deliveries(self) -> None:
        assert self._producer is not None
        while not self._stopping.is_set():
            self._producer.poll(_POLL_S)

    def _read_replies(self) -> None:
        assert self._consumer is not None and self._loop is not None
        while not self._stopping.is_set():
            replies = [
                reply
                for message in poll_batch(self._consumer, max_messages=1000, timeout_s=_POLL_S)
                if (reply := _decode(message, self._replies)) is not None
            ]
            if replies:
                self._loop.call_soon_threadsafe(self._waiting.settle, replies)

    def _close(self) -> None:
        with self._send_lock:
            self._sending_stopped = True
        self._stopping.set()
        for thread in self._threads:
            thread.join(5.0)
        if self._producer is not None:
            self._producer.flush(_FLUSH_S)
            # What librdkafka has not sent by now is dropped (its delivery reports say so), so nothing
            # reaches the request topic after its reply topic is gone.
            self._producer.purge(in_queue=True, in_flight=False)
            self._producer.flush(_FLUSH_S)
        if self._consumer is not None:
            self._consumer.close()
        self._delete_reply_topic()


def _decode(message: Message, replies: FramedCodec[CaptionReply]) -> CaptionReply | None:
    if message.error():
        log.warning("reply topic error: %s", message.error())
        return None
    try:
        return replies.decode(message.value() or b"")
    except CaptionerError as exc:  # unreadable, or a registry that cannot say how to read it
        log.warning("unreadable reply at offset %d: %s", message.offset(), exc)
        return None


def _result(path: str, correlation_id: str, outcome: CaptionReply | KafkaError) -> Result:
    if isinstance(outcome, KafkaError):
        return Result.failed(
            path,
            error="not_published",
            message=f"the job was not delivered to Kafka: {outcome.str()}",
            id=correlation_id,
        )
    if outcome.status is ReplyStatus.SUCCEEDED and outcome.title is not None:
        return Result.captioned(path, title=outcome.title, id=correlation_id)
    if outcome.error is not None:
        return Result.failed(path, error=outcome.error.code, message=outcome.error.message, id=correlation_id)
    return Result.failed(
        path, error="unknown_reply", message=f"the worker answered {outcome.status.value}", id=correlation_id
    )
