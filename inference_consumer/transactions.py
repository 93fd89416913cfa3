"""Exactly once (CAPTIONER_DELIVERY_GUARANTEE=exactly_once; docs/failure-handling.md, "Delivery
guarantees"): a worker's outcome records (replies, RETRYING notices, retry records, dead letters,
caption-cache entries) and the offsets they finish are committed together, in one Kafka transaction, or not
at all.

Ownership. Any thread stages records (`emit`); one thread at a time produces and commits them, holding
`_committing`: the committer thread, which commits as soon as records are staged, or a feeder's rebalance
callback, which commits the revoked partitions' finished work before letting them go. So every produce
happens inside an open transaction and none while one commits (librdkafka refuses that), and the
producer's delivery reports are served by the committing thread alone (commit and abort serve them).

What a transaction holds. The offsets it commits are each partition's contiguous finished prefix, as at
least once commits them; a job counts as finished once all its records are staged. Only the records of
jobs inside that prefix are produced: a job finished out of order (dead-lettered at once while an earlier
job of its partition still runs) stays staged until the jobs before it finish. So a record is committed
only together with an offset past its job: whatever a worker leaves behind when it dies, or when its
partitions move, is a job the partition's next owner runs again and whose outcome nobody has seen.

Fencing (KIP-447). The offsets go with each consumer's group metadata: a worker the group has moved on from
(a zombie, back after its session timeout) has them refused and its transaction aborted. A consumer answers
only on the thread that polls it (another thread's call waits behind its polls), so each feeder hands its
consumer's metadata over after every poll; metadata a rebalance made stale meanwhile only costs an aborted
transaction, done again with the next. Its partitions
are lost (the feeder forgets them) and their staged records are dropped, never produced into a later
transaction: a record is staged and produced only while its job's partition assignment is current.

A transaction that cannot finish. Every step before its commit waits at most until the transaction
could still commit (its coordinator aborts one open longer than the transaction timeout), or until a
revoke's or a stop's time is spent: a step that keeps failing retriably (a coordinator moving) ends it, and
it is aborted. Sending the offsets runs on a thread of its own, since librdkafka's call can wait for ever past
its own timeout (confluentinc/librdkafka#5456, #5511: a group coordinator whose broker has left the cluster
is waited for until some other broker connects or disconnects). While that call waits, the transaction can
be neither committed nor aborted: a new producer takes the transactional id over (registering it fences the
old producer and aborts its transaction; the brokers refuse whatever the old one sends later), and the old
one is left to its call, never used again. Each one left keeps its threads and connections: a worker whose
producer gets stuck after three replacements halts as for a fatal error. A commit, once asked for, is the
coordinator's to decide: it is resumed until it answers (librdkafka refuses an abort meanwhile), and only a
stop ends that wait.

An aborted transaction. Its records are staged again for the next one, except those the broker refused or
did not take within the delivery timeout: each of those takes its outcome's fallback (a final reply is
dead-lettered, a refused retry record too, a record timed out is sent again), so no record that a topic
refuses can make every transaction fail. A reply topic that did not take a reply within the delivery
timeout is not tried again for as long: a reply to it is undeliverable at once, so that one tenant's dead
reply topic does not hold every transaction for the delivery timeout, job after job.

A fatal producer error (another producer took this transactional id: two workers with one
CAPTIONER_WORKER_ID), or a fatal error of the worker's, halts the transactions: nothing more is committed,
and the worker exits with status 3, its uncommitted jobs left to the partitions' next owners.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from core.offsets import OffsetTracker, PartitionKey
from inference_consumer import metrics
from inference_consumer.delivery import OutcomeRecord, refusal
from inference_consumer.errors import WorkerFatalError
from inference_consumer.jobs import Job
from inference_consumer.kafka_waits import KafkaWaits

log = logging.getLogger(__name__)

T = TypeVar("T")

_SLICE_S = 0.5  # each call that waits on a broker waits this long at a time, so a stop can end the wait
_OFFSETS_SLICE_S = 5.0
_IDLE_S = 1.0
_RETRY_MIN_S, _RETRY_MAX_S = 0.05, 2.0  # after an aborted transaction; the least between two tries of a call
_MAX_REPLACED = 3  # producers left to a call that never returned, each with its threads and connections
_QUEUE_FULL_WAIT_S = 0.05
# Errors about the transaction or the producer, never about the record they are reported for: such a record
# goes into the next transaction as it is.
_NOT_THE_RECORDS = frozenset(
    {
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._STATE,
        KafkaError._FATAL,
        KafkaError._FENCED,
        KafkaError._INCONSISTENT,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_TXN_STATE,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError.TRANSACTION_COORDINATOR_FENCED,
    }
)
_TRANSACTION_STATE_ERRORS = frozenset({KafkaError._STATE, KafkaError._FATAL, KafkaError._FENCED})


class _GaveUp(Exception):
    """A call waiting on a broker was given up on: the worker is stopping and its time is spent, no broker
    is left to answer, or the transaction could no longer commit."""


class _Stuck(Exception):
    """A librdkafka call was given up on while it still runs: its transaction can be neither committed nor
    aborted through this producer."""


class TransactionalSink:
    """The outcome sink (delivery.OutcomeSink) and the offset commits (delivery.OffsetCommits) of an exactly
    once worker. Thread-safe."""

    def __init__(
        self,
        *,
        producer: Producer,
        new_producer: Callable[[], Producer],
        tracker: OffsetTracker,
        waits: KafkaWaits,
        delivery_timeout_s: float,
        transaction_timeout_s: float,
        on_fatal: Callable[[str], None],
        transactional_id: str = "",
    ) -> None:
        self._producer = producer
        self._new_producer = new_producer  # one configured as `producer` was, for the transactional id
        self._replaced: list[Producer] = []  # kept: a call of theirs may still run
        self._transaction_timeout_s = transaction_timeout_s
        self._tracker = tracker
        self._waits = waits
        self._delivery_timeout_s = delivery_timeout_s
        self._on_fatal = on_fatal
        self._transactional_id = transactional_id
        self._groups: dict[Consumer, frozenset[str]] = {}  # each consumer's topics
        self._metadata: dict[
            Consumer, object
        ] = {}  # each consumer's group metadata, as its feeder last saw it
        self._staged: list[OutcomeRecord] = []
        self._staging = threading.RLock()  # the staged records, and the tracker's view of them
        self._committing = threading.RLock()  # the producer: one transaction at a time
        self._sent: dict[PartitionKey, int] = {}  # positions committed, per partition
        self._unresponsive: dict[str, float] = {}  # reply topic -> until when its replies fail at once
        self._wanted = threading.Event()
        self._closing = threading.Event()
        self._halted = False
        self._thread = threading.Thread(target=self._run, name="transactions", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------------

    def add_group(self, consumer: Consumer, topics: Collection[str]) -> None:
        """A consumer whose finished offsets (of these topics) the transactions commit, in its group."""
        self._groups[consumer] = frozenset(topics)

    def start(self) -> None:
        """Registers the transactional id (aborting whatever a predecessor with this id left open), then
        starts committing. Raises WorkerFatalError when the cluster refuses the id."""
        try:
            self._retrying(functools.partial(self._producer.init_transactions, _OFFSETS_SLICE_S), None)
        except KafkaException as exc:
            error = exc.args[0]
            raise WorkerFatalError(
                f"transactions: transactional id {self._transactional_id!r} refused: {error.str()} (the "
                "worker's principal needs WRITE on its transactional id prefix: `captioner topics acls`)"
            ) from None
        except _GaveUp:
            raise WorkerFatalError("transactions: no transaction coordinator answered") from None
        self._thread.start()

    def close(self) -> None:
        """After the consumers closed: commits what is left (caption-cache entries) in the stop's time."""
        self._closing.set()
        self._wanted.set()
        self._thread.join(self._waits.left_s())
        with self._committing:
            if not self._halted and self._waits.reachable():
                self._commit(give_up=self._waits.give_up_at())

    def halt(self) -> None:
        """Nothing more is committed (the worker is stopping for a fatal reason)."""
        self._halted = True
        self._wanted.set()

    # -- the sink ---------------------------------------------------------------------------------------

    def emit(self, record: OutcomeRecord) -> bool:
        with self._staging:
            if record.job is not None and self._stale(record.job):
                return True  # its partition has moved on: the new owner runs the job again
            self._staged.append(record)
            if record.durable:
                record.durable()
        self._wanted.set()
        return True

    @contextlib.contextmanager
    def outcome(self) -> Iterator[None]:
        with self._staging:
            yield
        self._wanted.set()

    def serve(self) -> None:
        """Delivery reports are the committing thread's (see the module's docstring)."""

    # -- the offset commits -----------------------------------------------------------------------------

    def store(self, consumer: Consumer, topics: Collection[str]) -> None:
        """After each poll, on the consumer's thread: the transactions commit the offsets, with the group
        metadata (generation, member) this hands over."""
        self._metadata[consumer] = consumer.consumer_group_metadata()

    def revoked(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        """Commits the revoked partitions' finished work (with the rest) before another worker starts on
        them; what is not committed then is dropped, and run again by the partitions' next owner."""
        self._metadata[consumer] = consumer.consumer_group_metadata()
        with self._committing:
            if not self._halted and self._waits.reachable():
                self._commit(give_up=self._waits.give_up_at())
            elif not self._halted:
                log.warning("finished work of the revoked partitions not committed: no broker to commit to")
            self._forget(keys)

    def lost(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        """Another member owns these partitions now: their staged records are dropped, and a commit in
        progress that holds some of them fails (their offsets go with a generation the group has left)."""
        with self._committing:
            self._forget(keys)

    def _forget(self, keys: list[PartitionKey]) -> None:
        gone = set(keys)
        with self._staging:
            self._tracker.forget(keys)
            self._staged = [
                r for r in self._staged if r.job is None or (r.job.topic, r.job.partition) not in gone
            ]
            for key in keys:
                self._sent.pop(key, None)

    # -- committing -------------------------------------------------------------------------------------

    def _run(self) -> None:
        pause_s = _RETRY_MIN_S
        while not self._closing.is_set():
            self._wanted.wait(_IDLE_S)
            self._wanted.clear()
            if self._closing.is_set() or self._halted:
                return
            try:
                committed = self.commit()
            except Exception as exc:  # a bug: the worker cannot commit any more
                log.exception("transactions failed")
                self._halt_fatal(f"transactions failed: {type(exc).__name__}: {exc}")
                return
            if committed:
                pause_s = _RETRY_MIN_S
            else:
                self._closing.wait(pause_s)
                pause_s = min(pause_s * 2, _RETRY_MAX_S)

    def commit(self) -> bool:
        """Commits what is staged and eligible, with the offsets it finishes; False if that failed."""
        with self._committing:
            return self._commit(give_up=None)

    def _commit(self, *, give_up: float | None) -> bool:
        if self._halted:
            return False
        with self._staging:
            positions = self._tracker.positions()
            records = self._take_eligible(positions)
            offsets = {key: offset for key, offset in positions.items() if self._sent.get(key) != offset}
        if not records and not offsets:
            return True
        began = time.monotonic()
        # Past the transaction timeout its coordinator aborts it: no step before the commit waits longer.
        until = began + self._transaction_timeout_s
        produced: list[OutcomeRecord] = []
        try:
            self._producer.begin_transaction()
            while records:
                produced += self._produce_all(records)
                with self._staging:  # the fallbacks of records refused at once
                    records = self._take_eligible(positions)
            if self._halted:
                raise _GaveUp("halted")
            self._send_offsets(offsets, until if give_up is None else min(give_up, until))
            self._retrying(functools.partial(self._producer.commit_transaction, _SLICE_S), None)
        except _Stuck as exc:
            self._replace(exc, produced)
            return False
        except (KafkaException, _GaveUp) as exc:
            self._recover(exc, produced)
            return False
        metrics.TRANSACTIONS.labels(result="committed").inc()
        metrics.TRANSACTION_SECONDS.observe(time.monotonic() - began)
        self._sent.update(offsets)
        for record in produced:
            if record.acknowledged:
                record.acknowledged()
        return True

    def _take_eligible(self, positions: dict[PartitionKey, int]) -> list[OutcomeRecord]:
        """Takes the staged records whose jobs are inside their partitions' finished prefix (and every
        cache entry); drops those of partitions assigned anew since."""
        eligible: list[OutcomeRecord] = []
        waiting: list[OutcomeRecord] = []
        for record in self._staged:
            job = record.job
            if job is None:
                eligible.append(record)
                continue
            if self._stale(job):
                continue
            position = positions.get((job.topic, job.partition))
            (eligible if position is not None and job.offset < position else waiting).append(record)
        self._staged = waiting
        return eligible

    def _stale(self, job: Job) -> bool:
        return job.generation != self._tracker.generation(job.topic, job.partition)

    def _produce_all(self, records: list[OutcomeRecord]) -> list[OutcomeRecord]:
        produced = []
        for record in records:
            error = self._unresponsive_now(record) or self._produce(record)
            if error is None:
                produced.append(record)
                continue
            log.error("produce to %s refused: %s", record.topic, error.str())
            if record.failed:
                with self._staging:
                    record.failed(error)
        return produced

    def _unresponsive_now(self, record: OutcomeRecord) -> KafkaError | None:
        until = self._unresponsive.get(record.topic)
        if not record.reply or until is None:
            return None
        if time.monotonic() >= until:
            del self._unresponsive[record.topic]
            return None
        return KafkaError(
            KafkaError._MSG_TIMED_OUT,
            f"{record.topic} did not take a reply within the delivery timeout lately; not tried again yet",
        )

    def _produce(self, record: OutcomeRecord) -> KafkaError | None:
        """None once produced; the refusal when produce() refuses this record."""
        record.error = None
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    **record.produce_args(),
                    on_delivery=functools.partial(_delivered, record),
                )
                return None
            except BufferError:
                self._producer.poll(_QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal() or error.txn_requires_abort() or error.code() in _TRANSACTION_STATE_ERRORS:
                    raise
                return refusal(error)
            except (TypeError, ValueError) as exc:
                return refusal(exc)

    def _send_offsets(self, offsets: dict[PartitionKey, int], give_up: float) -> None:
        for consumer, topics in self._groups.items():
            mine = [
                TopicPartition(topic, partition, offset)
                for (topic, partition), offset in sorted(offsets.items())
                if topic in topics
            ]
            if mine:
                self._retrying(
                    functools.partial(self._send_group_offsets, consumer, mine, give_up),
                    give_up,
                )

    def _send_group_offsets(self, consumer: Consumer, offsets: list[TopicPartition], give_up: float) -> None:
        group = self._metadata.get(consumer)
        if group is None:  # never polled: it has no finished offsets to commit yet
            raise _GaveUp("no group metadata yet")
        self._bounded(
            functools.partial(self._producer.send_offsets_to_transaction, offsets, group, _OFFSETS_SLICE_S),
            give_up,
        )

    def _bounded(self, call: Callable[[], None], give_up: float) -> None:
        """call() on a thread of its own, waited for until give_up, or while the worker stops, as long as the
        stop allows (see the module's docstring, "A transaction that cannot finish")."""
        outcome: list[Exception | None] = []

        def run() -> None:
            try:
                call()
            except Exception as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=run, name="transactions-call", daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(_SLICE_S)
        while thread.is_alive():
            if time.monotonic() >= give_up or self._stop_spent():
                raise _Stuck(f"a transaction's call has not returned in {time.monotonic() - started:.0f} s")
            thread.join(_SLICE_S)
        [error] = outcome
        if error is not None:
            raise error

    def _retrying(self, call: Callable[[], T], give_up: float | None) -> T:
        """call() again while it fails retriably (timed out): for as long as it takes while the worker
        runs, until give_up, and once it is stopping for as long as the stop allows and a broker answers."""
        while True:
            tried = time.monotonic()
            try:
                return call()
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or error.fatal():
                    raise
                if give_up is not None and time.monotonic() >= give_up:
                    raise _GaveUp(error.str()) from None
                if self._stop_spent():
                    raise _GaveUp(error.str()) from None
                # Refused at once (another call in progress, say): not tried again in a busy loop.
                time.sleep(max(0.0, tried + _RETRY_MIN_S - time.monotonic()))

    def _stop_spent(self) -> bool:
        return self._waits.stopping() and not self._waits.waiting(self._waits.give_up_at())

    def _recover(self, exc: KafkaException | _GaveUp, produced: list[OutcomeRecord]) -> None:
        """After a failed transaction: abort it, stage its records again, and run the fallback of each one
        that failed for a reason of its own."""
        metrics.TRANSACTIONS.labels(result="aborted").inc()
        error = exc.args[0] if isinstance(exc, KafkaException) else None
        if error is not None and error.fatal():
            self._halt_fatal(f"transactions: fatal producer error: {error.str()}")
            return
        reason = error.str() if error is not None else f"gave up: {exc}"
        log.warning("transaction aborted (%s); its outcomes go into the next one", reason)
        try:
            self._retrying(functools.partial(self._producer.abort_transaction, _SLICE_S), None)
        except (KafkaException, _GaveUp) as abort_exc:
            self._halt_fatal(f"transactions: could not abort a failed transaction: {abort_exc}")
            return
        self._stage_again(produced)

    def _replace(self, exc: _Stuck, produced: list[OutcomeRecord]) -> None:
        """After a call that holds its transaction was given up on: a new producer takes the transactional
        id over, which aborts that transaction, and its records are staged again."""
        metrics.TRANSACTIONS.labels(result="aborted").inc()
        if self._waits.stopping():
            self._halt_fatal(f"transactions: {exc}")
            return
        if len(self._replaced) >= _MAX_REPLACED:
            self._halt_fatal(f"transactions: {exc}, after {len(self._replaced)} producers replaced so")
            return
        log.error("%s; a new producer takes the transactional id over and aborts the transaction", exc)
        self._replaced.append(self._producer)
        producer = self._new_producer()
        try:
            self._retrying(functools.partial(producer.init_transactions, _OFFSETS_SLICE_S), None)
        except (KafkaException, _GaveUp) as init_exc:
            self._halt_fatal(
                f"transactions: a new producer could not take the transactional id over: {init_exc}"
            )
            return
        self._producer = producer
        self._stage_again(produced)

    def _stage_again(self, produced: list[OutcomeRecord]) -> None:
        """The records of an aborted transaction: staged for the next one, or their fallback run."""
        if self._halted:
            return
        with self._staging:
            now = time.monotonic()
            failed = [r for r in produced if r.error is not None and r.error.code() not in _NOT_THE_RECORDS]
            again = [r for r in produced if r not in failed]
            for record in again:
                record.error = None
            self._staged[:0] = [r for r in again if r.job is None or not self._stale(r.job)]
            for record in failed:
                assert record.error is not None
                if record.reply and record.error.code() == KafkaError._MSG_TIMED_OUT:
                    self._unresponsive[record.topic] = now + self._delivery_timeout_s
                if record.job is not None and self._stale(record.job):
                    continue
                if record.failed:
                    record.failed(record.error)
        self._wanted.set()

    def _halt_fatal(self, reason: str) -> None:
        self.halt()
        if self._waits.stopping():
            log.warning("%s; stopping anyway", reason)
        else:
            self._on_fatal(reason)


def _delivered(record: OutcomeRecord, error: KafkaError | None, _message: Message) -> None:
    record.error = error
