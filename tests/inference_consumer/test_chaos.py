"""Chaos drills fail the first N batches the way a flaky model would: transiently, so they are retried."""

from __future__ import annotations

import pytest

from inference_consumer.chaos import FailingBatches
from inference_consumer.errors import InferenceError


def test_the_first_batches_fail_transiently_and_the_rest_run() -> None:
    chaos = FailingBatches(2)

    for _ in range(2):
        with pytest.raises(InferenceError) as failure:
            chaos.before_batch()
        assert failure.value.retriable
    chaos.before_batch()
    chaos.before_batch()


def test_no_chaos_by_default() -> None:
    FailingBatches(0).before_batch()
