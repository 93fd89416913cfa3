from __future__ import annotations

from core.offsets import OffsetTracker


def positions(tracker: OffsetTracker) -> list[tuple[str, int, int]]:
    return [(tp.topic, tp.partition, tp.offset) for tp in tracker.take_positions()]


def test_commits_only_the_contiguous_finished_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.track("t", 0, offset)

    tracker.finish("t", 0, 12)
    assert positions(tracker) == []  # 10 and 11 still run
    tracker.finish("t", 0, 10)
    assert positions(tracker) == [("t", 0, 11)]
    tracker.finish("t", 0, 11)
    assert positions(tracker) == [("t", 0, 13)]
    assert positions(tracker) == []  # taken once


def test_gaps_in_offsets_do_not_stall_commits() -> None:
    tracker = OffsetTracker()
    tracker.track("t", 0, 5)
    tracker.track("t", 0, 7)  # 6 is a transaction marker and never arrives

    tracker.finish("t", 0, 5)
    assert positions(tracker) == [("t", 0, 7)]
    tracker.finish("t", 0, 7)
    assert positions(tracker) == [("t", 0, 8)]


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    tracker.track("t", 0, 1)
    tracker.track("t", 1, 1)
    tracker.finish("t", 1, 1)
    assert positions(tracker) == [("t", 1, 2)]
    assert tracker.outstanding([("t", 0)]) == 1


def test_finish_after_forget_stores_nothing() -> None:
    tracker = OffsetTracker()
    tracker.track("t", 0, 1)
    tracker.forget([("t", 0)])
    tracker.finish("t", 0, 1)
    assert positions(tracker) == []


def test_wait_finished_times_out_while_work_is_outstanding() -> None:
    tracker = OffsetTracker()
    tracker.track("t", 0, 1)
    assert tracker.wait_finished([("t", 0)], timeout_s=0.05) is False
    tracker.finish("t", 0, 1)
    assert tracker.wait_finished([("t", 0)], timeout_s=0.05) is True


def test_a_late_finish_from_an_earlier_assignment_moves_nothing() -> None:
    tracker = OffsetTracker()
    old = tracker.track("t", 0, 105)
    tracker.forget([("t", 0)])  # revoked with the job still running; the partition comes back
    new = tracker.track("t", 0, 100)
    tracker.finish("t", 0, 100, new)
    tracker.finish("t", 0, 105, old)  # the earlier run finishes late

    assert [(tp.partition, tp.offset) for tp in tracker.take_positions()] == [(0, 101)]


def test_an_abandoned_offset_is_not_waited_for_and_never_committed_past() -> None:
    tracker = OffsetTracker()
    for offset in (3, 4, 5):
        tracker.track("t", 0, offset)

    tracker.abandon("t", 0, 4)
    tracker.finish("t", 0, 3)
    tracker.finish("t", 0, 5)

    assert tracker.wait_finished([("t", 0)], timeout_s=0)
    assert positions(tracker) == [("t", 0, 4)]
    assert tracker.positions() == {("t", 0): 4}


def test_an_abandon_from_an_earlier_assignment_holds_nothing_back() -> None:
    tracker = OffsetTracker()
    generation = tracker.track("t", 0, 1)
    tracker.forget([("t", 0)])
    tracker.track("t", 0, 1)

    tracker.abandon("t", 0, 1, generation)
    assert not tracker.wait_finished([("t", 0)], timeout_s=0)  # its new assignment's job still runs
    tracker.finish("t", 0, 1)
    assert positions(tracker) == [("t", 0, 2)]


def test_an_offset_abandoned_after_it_finished_takes_the_commit_position_back_to_it() -> None:
    """Exactly once, a job finishes when its outcome is staged in the open transaction; the broker may
    refuse that outcome afterwards."""
    tracker = OffsetTracker()
    for offset in (3, 4):
        tracker.track("t", 0, offset)
    tracker.finish("t", 0, 3)
    tracker.finish("t", 0, 4)

    tracker.abandon("t", 0, 3)

    assert tracker.positions() == {("t", 0): 3}
    assert positions(tracker) == [("t", 0, 3)]
    tracker.track("t", 0, 5)
    tracker.finish("t", 0, 5)
    assert tracker.positions() == {("t", 0): 3}
