"""Every setting of the service, read from the environment in one place.

Each role reads only the groups it needs; all models are frozen.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from functools import cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class KafkaSettings(BaseSettings):
    """How to reach the cluster. Secrets stay SecretStr until they reach librdkafka."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "CAPTIONER_KAFKA_BOOTSTRAP_SERVERS"),
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    replication_factor: int = Field(default=1, ge=1)
    debug: str | None = Field(default=None, description="librdkafka debug contexts, e.g. fetch,cgrp")


class TopicSettings(BaseSettings):
    """Topic names and shapes. The request topic is the public entry point."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_TOPIC_", frozen=True, extra="ignore")

    requests: str = "captioner.requests"
    replies: str = "captioner.replies"
    retry_prefix: str = "captioner.requests.retry"
    dead_letter: str = "captioner.requests.dlq"
    request_partitions: int = Field(default=6, ge=1)
    reply_partitions: int = Field(default=12, ge=1)
    retry_delays_s: tuple[float, ...] = (1.0, 5.0, 30.0)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    captions: str = Field(default="captioner.captions", description="the compacted caption-cache topic")

    def retry_topic(self, tier: int) -> str:
        return f"{self.retry_prefix}.{tier}"

    @property
    def retry_topics(self) -> list[str]:
        return [self.retry_topic(tier) for tier in range(1, len(self.retry_delays_s) + 1)]


class ApiSettings(BaseSettings):
    """The HTTP front (producer_api)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_API_", frozen=True, extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(default=9000, ge=0, le=65535)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_in_flight: int = Field(default=512, ge=1)
    max_buffered_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="request-body bytes one instance holds at once (429 above); ~38 max-size JSON bodies",
    )
    body_read_timeout_s: float = Field(
        default=30.0, gt=0, description="a body not received within this gets 408 and its slot back"
    )
    instance_id: str = Field(default_factory=_default_instance_id)
    reply_partition: int | None = Field(default=None, ge=0)
    shutdown_timeout_s: float = Field(default=10.0, ge=0)
    cache_max_entries: int = Field(default=100_000, ge=1, description="caption-cache entries held in memory")
    cache_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="caption-cache memory bound (entries' estimated size)"
    )


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPTIONER_LOG_", frozen=True, extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ImageSettings(BaseSettings):
    """Image limits that the API and the workers enforce alike (core.images)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", frozen=True, extra="ignore")

    # 24 MP covers phone photos (12-20 MP) with room; decoding one costs at most ~7 bytes a pixel.
    max_image_pixels: int = Field(default=24_000_000, ge=1, le=178_000_000)


class WorkerSettings(BaseSettings):
    """The inference worker (inference_consumer)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", frozen=True, extra="ignore")

    model: str = "microsoft/git-base-textcaps"
    decoder: Literal["hf", "fast"] = "fast"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantize: Literal["none", "int8"] = "none"
    packed_cpu_weights: bool = Field(
        default=False, description="fast decoder: oneDNN-packed fp32 weights on CPU (not bit-identical)"
    )
    worker_threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = all cores")
    worker_group_id: str = "captioner-workers"
    reply_topic_pattern: re.Pattern[str] | None = Field(
        default=None,
        description="when set, a request's reply_topic must match this regular expression (full match)",
    )
    worker_id: str = Field(default_factory=_default_instance_id)
    max_new_tokens: int = Field(default=20, ge=1, le=512)

    @property
    def retry_group_id(self) -> str:
        """The retry tiers' own consumer group, so they never crowd the request topic's assignment."""
        return f"{self.worker_group_id}.retries"

    min_new_tokens: int = Field(default=0, ge=0, le=512, description="forces fixed work in benchmarks")
    max_batch_size: int = Field(default=64, ge=1)
    batch_budget_ms: float = Field(
        default=6000.0,
        ge=0,
        description="a batch grows only while the last batch's time per job says it ends within this",
    )
    batch_wait_ms: float = Field(
        default=20.0,
        ge=0,
        description="a busy worker waits this long to fill a batch; lone requests never wait",
    )
    batch_wait_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="...or this share of its last batch's inference time, when that is longer",
    )
    decode_threads: int = Field(default=2, ge=1)
    malloc_threshold_mb: int = Field(
        default=1024,
        ge=0,
        le=2047,
        description="glibc: tensors below this reuse freed heap memory, not fresh pages; 0 = glibc default",
    )
    shutdown_timeout_s: float = Field(default=30.0, ge=0)
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="a worker that stops heartbeating loses its partitions after this",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")
    chaos_failing_batches: int = Field(
        default=0,
        ge=0,
        description="fail the first N inference batches with a transient error (drills, tests)",
    )


class CacheSettings(BaseSettings):
    """The caption cache (README, "Caption cache"): workers write it, API instances read it. An API
    instance keys its look-ups with the CAPTIONER_MODEL and CAPTIONER_MAX_NEW_TOKENS its workers
    caption with (set both alike; where they differ, look-ups only miss)."""

    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_CACHE_", frozen=True, extra="ignore", populate_by_name=True
    )

    enabled: bool = True
    model: str = Field(
        default=WorkerSettings.model_fields["model"].default, validation_alias="CAPTIONER_MODEL"
    )
    max_new_tokens: int = Field(
        default=WorkerSettings.model_fields["max_new_tokens"].default,
        ge=1,
        le=512,
        validation_alias="CAPTIONER_MAX_NEW_TOKENS",
    )


@cache
def kafka_settings() -> KafkaSettings:
    return KafkaSettings()


@cache
def topic_settings() -> TopicSettings:
    return TopicSettings()
