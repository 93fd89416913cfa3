"""Fault injection for drills and tests (`CAPTIONER_CHAOS_FAILING_BATCHES`); off by default."""

from __future__ import annotations

from inference_consumer.errors import InferenceError


class FailingBatches:
    """Fails the first `count` inference batches with a transient error, as a flaky model would, so the
    retry tiers and dead-lettering can be exercised against a real worker. Used by the inference loop's
    thread alone."""

    def __init__(self, count: int) -> None:
        self._left = count

    def before_batch(self) -> None:
        """Raises while injected failures are left; a no-op afterwards."""
        if self._left > 0:
            self._left -= 1
            raise InferenceError("chaos: injected transient inference failure")
