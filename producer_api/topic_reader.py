"""The API's consumer threads (the reply listener, the caption-cache reader): one thread polling one assigned
consumer, with one failure policy. Every record on a topic the API reads may be hostile, so a record whose
handling raises is logged, counted and skipped, and so is a poll that raises: nothing a record holds stops
the thread. Whether the thread runs is what readiness sees (`alive`)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from core.consuming import poll_batch

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.1
MAX_POLLED = 1000
# After a poll that raised: the pause before the next, so a broken consumer cannot spin a core.
FAILED_POLL_PAUSE_S = 0.1

# What a partition whose leader is moving (a topic just created, a broker restarting) answers for a moment.
LEADER_MOVING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}
LEADER_MOVING_PAUSE_S = 0.2

HandleRecord = Callable[[Message], None]
AfterPoll = Callable[[list[Message]], None]


def watermarks(consumer: Consumer, topic: str, partition: int, *, timeout_s: float) -> tuple[int, int]:
    """A partition's low and high watermarks, waiting out a leader that is moving for up to timeout_s."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=max(give_up - time.monotonic(), 0.1)
            )
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in LEADER_MOVING or time.monotonic() > give_up:
                raise
            time.sleep(LEADER_MOVING_PAUSE_S)


class TopicReader:
    """Polls `consumer` on a thread of its own until closed: `handle` takes each record (its failures are
    the record's), then `after_poll` the whole poll's records (an empty list after an idle poll)."""

    def __init__(
        self,
        *,
        name: str,
        consumer: Consumer,
        handle: HandleRecord,
        after_poll: AfterPoll | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """on_failure: counts a record or poll that raised (the caller's metric)."""
        self.name = name
        self.consumer = consumer
        self._handle = handle
        self._after_poll = after_poll
        self._on_failure = on_failure
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failures = 0
        self._logged: set[type[BaseException]] = set()  # each kind of failure's traceback is logged once

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """False before start() and once the thread has ended (by close())."""
        return self._thread.is_alive()

    def close(self, *, timeout_s: float) -> None:
        """Stops the thread, then closes the consumer; safe before start()."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.consumer.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                messages = poll_batch(self.consumer, max_messages=MAX_POLLED, timeout_s=POLL_TIMEOUT_S)
            except Exception:  # the consumer's own failure; the next poll may succeed
                self._failed("%s: a poll failed", self.name)
                self._stopping.wait(FAILED_POLL_PAUSE_S)
                continue
            for message in messages:
                try:
                    self._handle(message)
                except Exception:  # a hostile record costs itself only
                    self._failed(
                        "%s: record %s[%s]@%s skipped",
                        self.name,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    )
            if self._after_poll is not None:
                try:
                    self._after_poll(messages)
                except Exception:
                    self._failed("%s: handing over a poll's records failed", self.name)

    def _failed(self, what: str, *args: object) -> None:
        """Called in an except block: counts the failure; a flood of one kind must not flood the log."""
        self.failures += 1
        if self._on_failure is not None:
            self._on_failure()
        kind = sys.exc_info()[0] or Exception
        if kind in self._logged:
            log.debug(what, *args, exc_info=True)
            return
        self._logged.add(kind)
        log.exception(what + " (more of this kind: logged at DEBUG)", *args)
