"""`python -m tests.support.dying_worker worker`: the worker, which dies (os._exit, as a kill would) at
its first commit, after its outcome records reached the broker and before the offsets they finish are
committed. Exactly once, that is the first transaction's send_offsets_to_transaction (its records flushed
first); at least once, the first store_offsets (its records acknowledged before)."""

from __future__ import annotations

import os
from typing import Any

from confluent_kafka import Consumer, Producer

from captioner.cli import main
from inference_consumer import worker

DIED = 86  # the exit status it dies with
FLUSH_S = 30


class _DyingProducer(Producer):
    def send_offsets_to_transaction(self, *args: Any, **kwargs: Any) -> None:
        self.flush(FLUSH_S)  # the transaction's records are in the log, not committed
        os._exit(DIED)


class _DyingConsumer(Consumer):
    def store_offsets(self, *args: Any, **kwargs: Any) -> None:
        os._exit(DIED)


def dying_main() -> None:
    worker.Producer = _DyingProducer  # type: ignore[misc]
    worker.Consumer = _DyingConsumer  # type: ignore[misc]
    main()


if __name__ == "__main__":
    dying_main()
