"""Tracks which offsets are finished, so only a partition's contiguous finished prefix is committed.

Any thread may finish an offset, but only the consumer's own thread hands positions to librdkafka
(`take_positions` then `store_offsets`): a store from another thread can block behind a rebalance
callback that is itself waiting for jobs to finish.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable

from confluent_kafka import TopicPartition

PartitionKey = tuple[str, int]


class _PartitionProgress:
    """Offsets between two tracked ones that never arrive (transaction markers, compacted
    records) are not records, so the commit position is the lowest unfinished offset."""

    __slots__ = ("abandoned", "highest_finished", "next_to_commit", "outstanding")

    def __init__(self, first_offset: int) -> None:
        self.next_to_commit = first_offset
        self.highest_finished = first_offset - 1
        self.outstanding: set[int] = set()
        self.abandoned: int | None = None  # the lowest offset that will never finish here

    def finish(self, offset: int) -> int | None:
        """Marks offset finished; returns the new commit position if it advanced."""
        self.outstanding.discard(offset)
        self.highest_finished = max(self.highest_finished, offset)
        position = min(self.outstanding) if self.outstanding else self.highest_finished + 1
        if self.abandoned is not None:
            position = min(position, self.abandoned)
        if position <= self.next_to_commit:
            return None
        self.next_to_commit = position
        return position


class OffsetTracker:
    """Thread-safe. `track` when a record is taken, `finish` once its outcome is durable."""

    def __init__(self) -> None:
        self._partitions: dict[PartitionKey, _PartitionProgress] = {}
        self._positions: dict[PartitionKey, int] = {}
        # Bumped when a partition is forgotten: a job of an earlier assignment that finishes late must
        # not move the commit position of the partition's next assignment past jobs not yet re-run.
        self._generations: dict[PartitionKey, int] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def track(self, topic: str, partition: int, offset: int) -> int:
        """Returns the partition's assignment generation, for `finish`."""
        with self._lock:
            progress = self._partitions.get((topic, partition))
            if progress is None:
                progress = self._partitions[(topic, partition)] = _PartitionProgress(offset)
            progress.outstanding.add(offset)
            return self._generations.get((topic, partition), 0)

    def finish(self, topic: str, partition: int, offset: int, generation: int | None = None) -> None:
        with self._lock:
            if generation is not None and generation != self._generations.get((topic, partition), 0):
                return  # tracked under an earlier assignment: its new owner runs the record again
            progress = self._partitions.get((topic, partition))
            if progress is None:
                return  # partition was revoked meanwhile; its new owner re-runs the record
            advanced = progress.finish(offset)
            if advanced is not None:
                self._positions[(topic, partition)] = advanced
            self._changed.notify_all()

    def abandon(self, topic: str, partition: int, offset: int, generation: int | None = None) -> None:
        """This process will never finish offset (its outcome could be kept nowhere): no wait waits for
        it, and its partition's commit position never passes it, so the partition's next owner runs it."""
        with self._lock:
            if generation is not None and generation != self._generations.get((topic, partition), 0):
                return
            progress = self._partitions.get((topic, partition))
            if progress is None:
                return
            progress.outstanding.discard(offset)
            progress.abandoned = offset if progress.abandoned is None else min(progress.abandoned, offset)
            # Finished already (exactly once, a job finishes when its outcome is staged in the open
            # transaction, before the broker refuses it): the position that passed it goes back to it.
            progress.next_to_commit = min(progress.next_to_commit, offset)
            if self._positions.get((topic, partition), offset) > offset:
                self._positions[(topic, partition)] = offset
            self._changed.notify_all()

    def take_positions(self, topics: Collection[str] | None = None) -> list[TopicPartition]:
        """Commit positions (of these topics, or all) that advanced since the last call: each
        consumer stores only the positions of the topics it reads."""
        with self._lock:
            taken = {
                key: offset for key, offset in self._positions.items() if topics is None or key[0] in topics
            }
            for key in taken:
                del self._positions[key]
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in taken.items()]

    def positions(self) -> dict[PartitionKey, int]:
        """Every tracked partition's commit position now: its lowest unfinished offset (exactly once: the
        worker's transactions commit these, take_positions is the at-least-once path's)."""
        with self._lock:
            return {key: progress.next_to_commit for key, progress in self._partitions.items()}

    def generation(self, topic: str, partition: int) -> int:
        """The partition's assignment generation now: a job tracked under another is stale."""
        with self._lock:
            return self._generations.get((topic, partition), 0)

    def outstanding(self, keys: Iterable[PartitionKey] | None = None) -> int:
        with self._lock:
            selected = (
                self._partitions
                if keys is None
                else {k: self._partitions[k] for k in keys if k in self._partitions}
            )
            return sum(len(progress.outstanding) for progress in selected.values())

    def wait_finished(self, keys: Iterable[PartitionKey], *, timeout_s: float) -> bool:
        wanted = list(keys)
        with self._changed:
            return self._changed.wait_for(
                lambda: all(not self._partitions[k].outstanding for k in wanted if k in self._partitions),
                timeout=timeout_s,
            )

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        with self._lock:
            for key in keys:
                self._partitions.pop(key, None)
                self._positions.pop(key, None)
                self._generations[key] = self._generations.get(key, 0) + 1
            self._changed.notify_all()
