"""The record codecs a process uses, from its RegistrySettings: single-object encoding alone without a
registry URL, both framings with one (schemas/framing.py; docs/schema-registry.md)."""

from __future__ import annotations

import logging
import time
from typing import Any

from core.settings import RegistrySettings
from schemas.errors import SchemaRegistryUnavailableError
from schemas.framing import (
    SINGLE_OBJECT_CODECS,
    FramedCodec,
    RecordCodecs,
    RegistryClient,
    registry_codecs,
)

log = logging.getLogger(__name__)

_PREPARE_RETRY_S = 1.0
# How long a process starting waits for a registry that is not up yet before it gives up.
PREPARE_TIMEOUT_S = 30.0
# The registry client's HTTP library logs every request at INFO with its URL, which may carry credentials.
_HTTP_LOGGERS = ("httpx", "httpx2")


def registry_client_config(settings: RegistrySettings) -> dict[str, Any]:
    """The SchemaRegistryClient's configuration. No retries inside the client: a request to it is bounded
    by one timeout, and a record whose look-up fails is retried through the retry tiers."""
    assert settings.url is not None
    config: dict[str, Any] = {"url": settings.url, "timeout": settings.timeout_s, "max.retries": 0}
    if settings.user is not None:
        password = settings.password.get_secret_value() if settings.password is not None else ""
        config["basic.auth.user.info"] = f"{settings.user}:{password}"
    if settings.ca_location is not None:
        config["ssl.ca.location"] = settings.ca_location
    return config


def record_codecs(settings: RegistrySettings) -> RecordCodecs:
    if settings.url is None:
        return SINGLE_OBJECT_CODECS
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    client = RegistryClient(
        registry_client_config(settings),
        max_schemas=settings.max_cached_schemas,
        unknown_id_ttl_s=settings.unknown_id_ttl_s,
        lookups_per_s=settings.lookups_per_s,
    )
    return registry_codecs(client)


def prepare_writers(writers: list[tuple[FramedCodec[Any], str]], *, timeout_s: float) -> None:
    """Registers each codec's schema under its topic's subject before the first record is written, so that
    writing makes no registry request; waits out a registry that is not up yet, up to timeout_s. A refusal
    (an incompatible schema under the subject) raises at once."""
    give_up = time.monotonic() + timeout_s
    for codec, topic in writers:
        while True:
            try:
                codec.prepare(topic)
                break
            except SchemaRegistryUnavailableError as exc:
                if time.monotonic() > give_up:
                    raise
                log.warning("schema registry not ready for %s: %s (%s)", topic, exc.message, exc.detail)
                time.sleep(_PREPARE_RETRY_S)
