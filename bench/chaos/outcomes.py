"""Counting a run's answers: per fault, and for the whole run; and when throughput came back after a fault."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.chaos.traffic import NO_ANSWER, Answer, duplicate_ids, wrong_titles
from bench.stats import percentile

BIN_S = 1.0
SMOOTH_BINS = 2  # answered throughput is averaged over this many seconds: batching makes single seconds jumpy
RECOVERED_SHARE = 0.9  # of steady throughput


def answered_rate(answers: Sequence[Answer], start: float, end: float) -> float:
    """200s per second that completed in [start, end)."""
    if end <= start:
        return math.nan
    return sum(1 for a in answers if a.status == 200 and start <= a.done < end) / (end - start)


def steady_rate(answers: Sequence[Answer], start: float, end: float, *, offered_rate: float) -> float:
    """Answered throughput in [start, end), at most the rate the load offers the API instances. Requests
    held up at the start (cold workers' first batches) are answered in a burst: inside a short window they
    would count more than the load offers, and every recovery after would wait for a rate that never comes
    (each fault's steps would run to max_recovery_s)."""
    return min(answered_rate(answers, start, end), offered_rate)


def _below_steady(answers: Sequence[Answer], since: float, until: float, steady_rate: float) -> list[bool]:
    """For each whole second in [since, until): was answered throughput (averaged over SMOOTH_BINS seconds)
    below RECOVERED_SHARE of steady?"""
    bins = max(int((until - since) // BIN_S), 0)
    counts = [0] * bins
    for answer in answers:
        if answer.status == 200 and since <= answer.done < since + bins * BIN_S:
            counts[int((answer.done - since) // BIN_S)] += 1
    below = []
    for index in range(bins):
        window = counts[max(0, index - SMOOTH_BINS + 1) : index + 1]
        below.append(sum(window) / (len(window) * BIN_S) < RECOVERED_SHARE * steady_rate)
    return below


def last_dip_end(answers: Sequence[Answer], since: float, until: float, steady_rate: float) -> float:
    """The end of the last second in [since, until) with answered throughput below RECOVERED_SHARE of
    steady, or `since` when there was none."""
    below = _below_steady(answers, since, until, steady_rate)
    dips = [index for index, low in enumerate(below) if low]
    return since + (dips[-1] + 1) * BIN_S if dips else since


def degraded_s(answers: Sequence[Answer], since: float, until: float, steady_rate: float) -> float:
    """Seconds in [since, until) with answered throughput below RECOVERED_SHARE of steady."""
    return sum(_below_steady(answers, since, until, steady_rate)) * BIN_S


@dataclass(frozen=True)
class Tally:
    sent: int
    answered_200: int
    errors_503: int
    errors_504: int
    errors_other: int  # any other status: none is expected
    lost: int  # no answer within the client timeout
    wrong_title: int  # a 200 without an id, or with a title that is not its image's
    duplicate_ids: int  # a 200 whose correlation id another 200 carried too
    p99_ms: float

    @classmethod
    def of(cls, answers: Sequence[Answer]) -> Tally:
        statuses = Counter(answer.status for answer in answers)
        expected = statuses[200] + statuses[503] + statuses[504] + statuses[NO_ANSWER]
        return cls(
            sent=len(answers),
            answered_200=statuses[200],
            errors_503=statuses[503],
            errors_504=statuses[504],
            errors_other=len(answers) - expected,
            lost=statuses[NO_ANSWER],
            wrong_title=wrong_titles(answers),
            duplicate_ids=duplicate_ids(answers),
            p99_ms=round(percentile([answer.latency_ms for answer in answers], 99), 1),
        )

    def as_dict(self) -> dict[str, int | float]:
        return {
            "sent": self.sent,
            "answered_200": self.answered_200,
            "errors_503": self.errors_503,
            "errors_504": self.errors_504,
            "errors_other": self.errors_other,
            "lost": self.lost,
            "wrong_title": self.wrong_title,
            "duplicate_ids": self.duplicate_ids,
            "p99_ms": self.p99_ms,
        }


def due_between(answers: Sequence[Answer], start: float, end: float) -> list[Answer]:
    return [answer for answer in answers if start <= answer.due < end]
