"""Logging set-up shared by every entry point; the level comes from settings, read by the caller."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )


# The operator tools' Kafka clients log here (their `logger` config), so one switch quiets them all.
LIBRDKAFKA_LOG = logging.getLogger("captioner.librdkafka")


def configure_tool_logging(*, verbose: bool) -> None:
    """An operator command's logging: warnings only, and none of the Kafka client's connection retries
    (a failure ends with one line and an exit code), unless -v asks for the details."""
    configure_logging("INFO" if verbose else "WARNING")
    LIBRDKAFKA_LOG.setLevel(logging.INFO if verbose else logging.CRITICAL)
