"""The chaos harness's bookkeeping: which requests count as what, and when throughput came back."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bench.chaos.__main__ import passed
from bench.chaos.config import FAULTS, load_config
from bench.chaos.kafka_callers import (
    KafkaJob,
    KafkaOutcomes,
    duplicate_replies,
    final_reply_counts,
    kafka_outcomes,
    takes,
)
from bench.chaos.outcomes import Tally, degraded_s, last_dip_end, steady_rate
from bench.chaos.services import service_env
from bench.chaos.traffic import NO_ANSWER, Answer, Workload
from core.settings import InvalidSettingError
from schemas import CaptionReply, ReplyStatus
from tests.bench.conftest import Environment


def answered(done_times: list[float], *, status: int = 200, title_ok: bool = True) -> list[Answer]:
    return [
        Answer(
            due=done - 0.1,
            done=done,
            api=0,
            image=0,
            status=status,
            id=f"id-{index}-{done}",
            title_ok=title_ok,
        )
        for index, done in enumerate(done_times)
    ]


def steady(rate: int, start: float, end: float) -> list[float]:
    """Completion times of `rate` answers a second in [start, end)."""
    return [start + step / rate for step in range(int((end - start) * rate))]


def test_throughput_that_never_drops_needs_no_recovery() -> None:
    answers = answered(steady(10, 0, 20))

    assert last_dip_end(answers, 0, 20, steady_rate=10) == 0
    assert degraded_s(answers, 0, 20, steady_rate=10) == 0


def test_recovery_ends_with_the_last_second_below_ninety_percent() -> None:
    answers = answered(steady(10, 0, 5) + steady(10, 9, 20))  # nothing answered for 4 s

    dip_end = last_dip_end(answers, 0, 20, steady_rate=10)

    assert dip_end == 10  # the 2 s average is back to 10/s once the second 9..10 is full
    assert degraded_s(answers, 0, 20, steady_rate=10) == 5


def test_a_start_up_backlog_answered_in_the_steady_window_does_not_raise_steady_above_the_offered_rate() -> (
    None
):
    backlog = [3.2] * 18  # the requests of the first seconds, held up by cold workers, answered at once
    answers = answered(backlog + steady(12, 3.2, 40))

    rate = steady_rate(answers, 3, 6, offered_rate=12)

    assert rate == 12
    # Throughput at the offered rate after a fault is a recovery, not a dip that lasts until max_recovery_s.
    assert last_dip_end(answers, 10, 40, steady_rate=rate) == 10


def test_steady_below_the_offered_rate_is_what_was_answered() -> None:
    answers = answered(steady(8, 0, 10))

    assert steady_rate(answers, 3, 6, offered_rate=12) == pytest.approx(8)


def test_a_workloads_http_rate_leaves_out_its_kafka_callers_share() -> None:
    workload = Workload(
        urls=("u",), images=(b"i",), titles=("t",), rate=15, client_timeout_s=1, kafka_caller_share=0.2
    )

    assert workload.http_rate == pytest.approx(12)


def test_errors_are_not_answered_throughput() -> None:
    answers = answered(steady(10, 0, 20), status=503)

    assert last_dip_end(answers, 0, 20, steady_rate=10) == 20


def test_a_tally_counts_each_outcome_once() -> None:
    answers = [
        *answered([1.0, 2.0]),
        *answered([3.0], title_ok=False),
        *answered([4.0], status=503),
        *answered([5.0], status=504),
        *answered([6.0], status=NO_ANSWER),
        *answered([7.0], status=500),
    ]
    duplicate = Answer(due=7.5, done=8.0, api=1, image=0, status=200, id=answers[0].id, title_ok=True)

    tally = Tally.of([*answers, duplicate])

    assert (tally.sent, tally.answered_200, tally.errors_503, tally.errors_504) == (8, 4, 1, 1)
    assert (tally.lost, tally.errors_other, tally.wrong_title, tally.duplicate_ids) == (1, 1, 1, 1)


def test_requests_alternate_instances_and_each_instance_sees_every_image() -> None:
    workload = Workload(
        urls=("a", "b"), images=(b"1", b"2", b"3"), titles=("x", "y", "z"), rate=1, client_timeout_s=1
    )

    picks = [workload.pick(index) for index in range(12)]

    assert {api for api, _ in picks} == {0, 1}
    assert {(api, image) for api, image in picks} == {(api, image) for api in (0, 1) for image in (0, 1, 2)}


def test_config_names_every_fault_by_default_and_refuses_unknown_ones(environment: Environment) -> None:
    assert load_config().faults == FAULTS
    environment(CHAOS_FAULTS="worker-kill, leader-kill")
    assert load_config().faults == ("worker-kill", "leader-kill")
    environment(CHAOS_FAULTS="meteor")
    with pytest.raises(InvalidSettingError, match=r"CHAOS_FAULTS: .*unknown"):
        load_config()


def reply(correlation_id: str, status: ReplyStatus, title: str | None = None) -> CaptionReply:
    return CaptionReply(correlation_id=correlation_id, status=status, model="m", worker_id="w", title=title)


def test_only_final_replies_count_and_a_job_with_two_is_a_duplicate() -> None:
    replies = [
        reply("a", ReplyStatus.RETRYING),
        reply("a", ReplyStatus.SUCCEEDED, "x"),
        reply("b", ReplyStatus.SUCCEEDED, "y"),
        reply("b", ReplyStatus.SUCCEEDED, "y"),
        reply("c", ReplyStatus.FAILED),
        reply("c", ReplyStatus.SUCCEEDED, "z"),
    ]

    finals = final_reply_counts(replies)

    assert finals == {"a": 1, "b": 2, "c": 2}
    assert duplicate_replies(["a", "b", "b", None, "d"], finals) == 1
    assert duplicate_replies(["a", "b", "c"], finals) == 2


def test_each_kafka_caller_needs_a_succeeded_reply_with_its_own_title() -> None:
    jobs = [
        KafkaJob(id=name, image=image, due=0.0) for name, image in (("a", 0), ("b", 1), ("c", 0), ("d", 1))
    ]
    replies = [
        reply("a", ReplyStatus.SUCCEEDED, "x"),
        reply("b", ReplyStatus.SUCCEEDED, "x"),  # image 1's title is y
        reply("c", ReplyStatus.FAILED),
        reply("d", ReplyStatus.RETRYING),
    ]

    outcomes = kafka_outcomes(jobs, replies, titles=("x", "y"))

    assert outcomes == KafkaOutcomes(sent=4, answered=1, lost=2, wrong_title=1)


def test_the_kafka_callers_take_their_share_of_the_requests_spread_out() -> None:
    picked = [index for index in range(100) if takes(index, 0.2)]

    assert len(picked) == 20
    assert all(later - earlier == 5 for earlier, later in itertools.pairwise(picked))
    assert not any(takes(index, 0.0) for index in range(100))


def test_chaos_workers_run_as_the_service_does_by_default(environment: Environment, tmp_path: Path) -> None:
    config = load_config()
    assert config.delivery_guarantee == "at_least_once"
    env = service_env(config, bootstrap="localhost:1", model_dir=tmp_path)
    assert env["CAPTIONER_DELIVERY_GUARANTEE"] == "at_least_once"
    environment(CHAOS_DELIVERY_GUARANTEE="exactly_once")
    assert load_config().delivery_guarantee == "exactly_once"


CLEAN_SUMMARY = {"lost": 0, "wrong_title": 0, "duplicate_replies": 0, "uncommitted_jobs": 0}


@pytest.mark.parametrize(
    ("counts", "guarantee", "expected"),
    [
        ({}, "exactly_once", True),
        ({"duplicate_replies": 1}, "exactly_once", False),
        ({"duplicate_replies": 1}, "at_least_once", True),
        ({"lost": 1}, "at_least_once", False),
        ({"wrong_title": 1}, "at_least_once", False),
        ({"uncommitted_jobs": 1}, "at_least_once", False),
    ],
    ids=["clean", "duplicate-exactly-once", "duplicate-at-least-once", "lost", "wrong-title", "uncommitted"],
)
def test_a_run_passes_with_duplicate_replies_only_at_least_once(
    counts: dict[str, int], guarantee: str, expected: bool
) -> None:
    assert passed(CLEAN_SUMMARY | counts, delivery_guarantee=guarantee) is expected
