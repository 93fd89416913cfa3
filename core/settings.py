"""Every setting of the service, read from the environment in one place.

Each entry point (a `captioner` command) builds the groups its role needs, once, and passes them down;
nothing below it reads the environment. All models are frozen.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from schemas.errors import CaptionerError


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class KafkaSettings(BaseSettings):
    """How to reach the cluster. Secrets stay SecretStr until they reach librdkafka."""

    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_KAFKA_", frozen=True, extra="ignore", populate_by_name=True
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "CAPTIONER_KAFKA_BOOTSTRAP_SERVERS"),
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(default=None, description="CA certificate(s) to verify brokers by")
    ssl_certificate_location: str | None = Field(default=None, description="client certificate (mutual TLS)")
    ssl_key_location: str | None = Field(default=None, description="the client certificate's private key")
    ssl_key_password: SecretStr | None = None
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
    worker_group_id: str = Field(
        default="captioner-workers",
        validation_alias=AliasChoices("CAPTIONER_API_WORKER_GROUP_ID", "CAPTIONER_WORKER_GROUP_ID"),
        description="the workers' consumer group, which /readyz asks for members holding request partitions",
    )
    ready_needs_worker: bool = Field(
        default=True, description="/readyz answers 503 until a worker holds request partitions"
    )
    max_batch_items: int = Field(default=32, ge=1, le=1024, description="images in one batch request")
    max_batch_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="the most bytes one batch request body may have"
    )
    keys: SecretStr | None = Field(
        default=None, description="comma-separated API keys; with keys_file, any key configured turns auth on"
    )
    keys_file: Path | None = Field(default=None, description="a file of API keys, one a line (# comments)")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve /metrics on this port only (default: the API port)"
    )

    def api_keys(self) -> tuple[SecretStr, ...]:
        """Every configured key, from CAPTIONER_API_KEYS and the keys file; empty means auth is off.
        Read once, at start-up: an unreadable keys file stops the API rather than leaving it open."""
        lines = self.keys.get_secret_value().split(",") if self.keys else []
        if self.keys_file is not None:
            lines += self.keys_file.read_text(encoding="utf-8").splitlines()
        keys = (line.strip() for line in lines)
        return tuple(SecretStr(key) for key in keys if key and not key.startswith("#"))

    cache_max_entries: int = Field(default=100_000, ge=1, description="caption-cache entries held in memory")
    cache_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="caption-cache memory bound (entries' estimated size)"
    )


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPTIONER_LOG_", frozen=True, extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json", "auto"] = Field(
        default="auto", description="auto: text on a terminal, JSON lines otherwise"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class TracingSettings(BaseSettings):
    """OpenTelemetry spans. The exporters' own OTEL_* variables (endpoint, headers, service name,
    sampling) are read by the OpenTelemetry SDK, as its documentation says."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", frozen=True, extra="ignore")

    tracing: str = Field(
        default="off",
        pattern=r"^(off|otlp|console|file:.+)$",
        description="where spans go: off, otlp (OTEL_EXPORTER_OTLP_*), console, or file:<path> (JSON lines)",
    )


class ImageSettings(BaseSettings):
    """Image limits that the API and the workers enforce alike (core.images)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", frozen=True, extra="ignore")

    # 24 MP covers phone photos (12-20 MP) with room; decoding one costs at most ~7 bytes a pixel.
    max_image_pixels: int = Field(default=24_000_000, ge=1, le=178_000_000)


class WorkerSettings(BaseSettings):
    """The inference worker (inference_consumer)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", frozen=True, extra="ignore")

    model: str = "microsoft/git-base-textcaps"
    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="the model's public name in replies; default: a hub id as given, a directory's own name",
    )
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
    image_pipeline: Literal["auto", "pil", "tensor"] = Field(
        default="auto",
        description="pil: decode and preprocess each image on the CPU; tensor: JPEGs decoded and "
        "preprocessed in batches on the model's device; auto: tensor on CUDA, pil on CPU",
    )
    malloc_threshold_mb: int = Field(
        default=1024,
        ge=0,
        le=2047,
        description="glibc: tensors below this reuse freed heap memory, not fresh pages; 0 = glibc default",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="how long SIGTERM or a rebalance lets in-flight jobs finish and their outcomes be sent",
    )
    delivery_timeout_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="a reply, retry or dead-letter record the broker has not taken within this has failed: "
        "a reply is dead-lettered (reply_undeliverable), a retry or dead letter is sent again",
    )
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

    @property
    def retry_group_id(self) -> str:
        """The retry tiers' own consumer group, so they never crowd the request topic's assignment."""
        return f"{self.worker_group_id}.retries"


class CacheSettings(BaseSettings):
    """The caption cache (README, "Caption cache"): workers write it, API instances read it. An API
    instance keys its look-ups with the model (CAPTIONER_MODEL, CAPTIONER_MODEL_ID) and
    CAPTIONER_MAX_NEW_TOKENS its workers caption with (set them alike; where they differ, look-ups only
    miss)."""

    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_CACHE_", frozen=True, extra="ignore", populate_by_name=True
    )

    enabled: bool = True
    model: str = Field(
        default=WorkerSettings.model_fields["model"].default, validation_alias="CAPTIONER_MODEL"
    )
    model_id: str | None = Field(
        default=None, min_length=1, max_length=256, validation_alias="CAPTIONER_MODEL_ID"
    )
    max_new_tokens: int = Field(
        default=WorkerSettings.model_fields["max_new_tokens"].default,
        ge=1,
        le=512,
        validation_alias="CAPTIONER_MAX_NEW_TOKENS",
    )


# Every group, by the name `captioner config` shows it under.
SETTINGS_GROUPS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "topics": TopicSettings,
    "api": ApiSettings,
    "worker": WorkerSettings,
    "images": ImageSettings,
    "log": LogSettings,
    "tracing": TracingSettings,
    "cache": CacheSettings,
}
PREFIX = "CAPTIONER_"
# CAPTIONER_* variables that are not settings but may sit in a service's environment: the test
# harness's, inherited by the services the tests start.
NOT_SETTINGS: dict[str, str] = {
    "CAPTIONER_TEST_BROKER_PORT": "the port of the tests' local Kafka broker (tests/support/broker.py)",
}


class UnknownSettingError(CaptionerError):
    """A CAPTIONER_* variable that no setting reads: a typo would otherwise leave a default (a security
    setting, say) silently in force."""

    code = "unknown_setting"


class InvalidSettingError(CaptionerError):
    """A setting's value that its group refuses (not a number, out of range, not JSON); the message names
    the variable and says why, never its value (it may be a secret)."""

    code = "invalid_setting"


Group = TypeVar("Group", bound=BaseSettings)
_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "(\w+)"')


def load_settings(group: type[Group]) -> Group:
    """The group read from the environment; a bad value raises InvalidSettingError, one line."""
    try:
        return group()
    except ValidationError as exc:
        names = variable_names(group)
        problems = [
            f"{names.get(str(error['loc'][0]), error['loc'][0]) if error['loc'] else group.__name__}: "
            f"{error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
    except SettingsError as exc:  # a JSON-valued setting that is not JSON
        found = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        field = found.group(1) if found else ""
        problems = [f"{variable_names(group).get(field, group.__name__)}: not valid JSON"]
    raise InvalidSettingError(
        "invalid setting" + ("s: " if len(problems) > 1 else ": ") + "; ".join(problems)
    )


def field_variables(group: type[BaseSettings], name: str) -> list[str]:
    """The variables that set one field, its own name first: an alias where it has one (several for
    AliasChoices), else the group's prefix and the field's name."""
    alias = group.model_fields[name].validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [choice.upper() for choice in alias.choices if isinstance(choice, str)]
    return [(group.model_config.get("env_prefix", "") + name).upper()]


def variable_names(group: type[BaseSettings]) -> dict[str, str]:
    """Field name -> the CAPTIONER_* variable that sets it."""
    return {name: field_variables(group, name)[0] for name in group.model_fields}


def known_variables() -> frozenset[str]:
    names = {
        variable
        for group in SETTINGS_GROUPS.values()
        for name in group.model_fields
        for variable in field_variables(group, name)
    }
    return frozenset(names | NOT_SETTINGS.keys())


def refuse_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """Raises UnknownSettingError naming each CAPTIONER_* variable no setting reads (settings are read
    case-insensitively, so the check is too), with the closest known name."""
    known = known_variables()
    unknown = sorted(
        name
        for name in (os.environ if environ is None else environ)
        if name.upper().startswith(PREFIX) and name.upper() not in known
    )
    if not unknown:
        return
    suffixes = [name.removeprefix(PREFIX) for name in known]
    lines = []
    for name in unknown:
        # Compared without the prefix every name shares, which would make anything look close.
        close = difflib.get_close_matches(name.upper().removeprefix(PREFIX), suffixes, n=1)
        lines.append(f"{name} (did you mean {PREFIX}{close[0]}?)" if close else name)
    raise UnknownSettingError(
        "unknown setting"
        + ("s: " if len(lines) > 1 else ": ")
        + ", ".join(lines)
        + "; every setting is listed in README.md, Settings"
    )


def effective_settings() -> dict[str, dict[str, Any]]:
    """Each group's values as the services would read them now, by variable name; secrets masked."""
    effective = {}
    for name, group in SETTINGS_GROUPS.items():
        values = load_settings(group).model_dump(mode="json")
        effective[name] = {variable: values[field] for field, variable in variable_names(group).items()}
    return effective
