from __future__ import annotations

from confluent_kafka import TopicPartition

from inference_consumer.offsets import OffsetTracker


class StoredOffsets:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, offsets: list[TopicPartition]) -> None:
        self.calls.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    @property
    def last(self) -> int | None:
        return self.calls[-1][2] if self.calls else None


def make_tracker() -> tuple[OffsetTracker, StoredOffsets]:
    stored = StoredOffsets()
    return OffsetTracker(store=stored), stored


def test_commits_only_the_contiguous_finished_prefix() -> None:
    tracker, stored = make_tracker()
    for offset in (10, 11, 12):
        tracker.track("t", 0, offset)

    tracker.finish("t", 0, 12)
    assert stored.last is None  # 10 and 11 still run
    tracker.finish("t", 0, 10)
    assert stored.last == 11
    tracker.finish("t", 0, 11)
    assert stored.last == 13


def test_gaps_in_offsets_do_not_stall_commits() -> None:
    tracker, stored = make_tracker()
    tracker.track("t", 0, 5)
    tracker.track("t", 0, 7)  # 6 is a transaction marker and never arrives

    tracker.finish("t", 0, 5)
    assert stored.last == 7
    tracker.finish("t", 0, 7)
    assert stored.last == 8


def test_partitions_are_independent() -> None:
    tracker, stored = make_tracker()
    tracker.track("t", 0, 1)
    tracker.track("t", 1, 1)
    tracker.finish("t", 1, 1)
    assert stored.calls == [("t", 1, 2)]
    assert tracker.outstanding([("t", 0)]) == 1


def test_finish_after_forget_stores_nothing() -> None:
    tracker, stored = make_tracker()
    tracker.track("t", 0, 1)
    tracker.forget([("t", 0)])
    tracker.finish("t", 0, 1)
    assert stored.calls == []


def test_wait_finished_times_out_while_work_is_outstanding() -> None:
    tracker, _ = make_tracker()
    tracker.track("t", 0, 1)
    assert tracker.wait_finished([("t", 0)], timeout_s=0.05) is False
    tracker.finish("t", 0, 1)
    assert tracker.wait_finished([("t", 0)], timeout_s=0.05) is True
