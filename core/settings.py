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
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.cache_keys import REVISION
from schemas.errors import CaptionerError


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# Old variable -> the one that replaced it: still read, and named at start (deprecation_warnings) so that
# it can be renamed.
RENAMED: dict[str, str] = {}


def renamed(name: str, *, was: str) -> AliasChoices:
    """A setting's variable `name`, formerly `was`: both are read, `name` first."""
    RENAMED[was] = name
    return AliasChoices(name, was)


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


# An API key is a shared secret: long enough that guessing it is hopeless (32 random characters of a
# base64 or hex alphabet hold 128 bits or more), and visible ASCII, as an HTTP header carries it.
MIN_API_KEY_CHARS = 32
_API_KEY = re.compile(r"[!-~]+")
# What a stop adds to the request timeout by default, so a request that began its wait just before the
# stop still gets its caption or its 504.
DRAIN_MARGIN_S = 5.0


def _keys_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("api_keys", message)


def _api_keys(keys: SecretStr | None, keys_file: Path | None) -> tuple[SecretStr, ...]:
    """The keys of CAPTIONER_API_KEYS (comma-separated) and of the keys file (one a line, blank lines
    and # comments skipped). A bad one is named by its place, never shown."""
    places: list[tuple[str, str]] = []
    if keys is not None:
        items = keys.get_secret_value().split(",")
        places += [(f"CAPTIONER_API_KEYS, key {n}", item) for n, item in enumerate(items, 1)]
    if keys_file is not None:
        try:
            lines = keys_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise _keys_error(f"CAPTIONER_API_KEYS_FILE cannot be read: {reason}") from None
        places += [(f"CAPTIONER_API_KEYS_FILE, line {n}", line) for n, line in enumerate(lines, 1)]
    found = []
    for place, item in places:
        key = item.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_API_KEY_CHARS or _API_KEY.fullmatch(key) is None:
            raise _keys_error(
                f"{place}: an API key must be at least {MIN_API_KEY_CHARS} visible ASCII characters "
                "without spaces"
            )
        found.append(SecretStr(key))
    return tuple(found)


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
    shutdown_timeout_s: float | None = Field(
        default=None,
        ge=0,
        description="how long a stop lets requests in flight finish before answering the rest 503; "
        "default: the request timeout + 5 s",
    )
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
    auth: Literal["auto", "required", "off"] = Field(
        default="auto",
        description="API keys: auto = required when keys or a keys file are configured; required = "
        "refuse to start without a key; off = no keys (refused when keys are configured)",
    )
    keys: SecretStr | None = Field(default=None, description="comma-separated API keys")
    keys_file: Path | None = Field(default=None, description="a file of API keys, one a line (# comments)")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve /metrics on this port only (default: the API port)"
    )
    _api_keys: tuple[SecretStr, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _read_api_keys(self) -> Self:
        """Keys are read once, here: a keys setting that yields no usable key, a short key, or an
        unreadable keys file stops the API rather than leaving it open."""
        settings = {"CAPTIONER_API_KEYS": self.keys, "CAPTIONER_API_KEYS_FILE": self.keys_file}
        configured = " and ".join(name for name, value in settings.items() if value is not None)
        if self.auth == "off" and configured:
            raise _keys_error(f"CAPTIONER_API_AUTH=off, but {configured} is set: unset one or the other")
        keys = _api_keys(self.keys, self.keys_file)
        if not keys and configured:
            raise _keys_error(
                f"{configured}: no API key, only blank or comment lines; set a key, or unset it and set "
                "CAPTIONER_API_AUTH=off to run without authentication"
            )
        if not keys and self.auth == "required":
            raise _keys_error(
                "CAPTIONER_API_AUTH=required, but no key is set (CAPTIONER_API_KEYS, CAPTIONER_API_KEYS_FILE)"
            )
        self._api_keys = keys
        return self

    def api_keys(self) -> tuple[SecretStr, ...]:
        """Every configured key; empty only when authentication is off."""
        return self._api_keys

    @property
    def drain_timeout_s(self) -> float:
        """How long a stop waits for the requests in flight (CAPTIONER_API_SHUTDOWN_TIMEOUT_S)."""
        if self.shutdown_timeout_s is not None:
            return self.shutdown_timeout_s
        return self.request_timeout_s + DRAIN_MARGIN_S

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

    # The worker's own process settings that the API has too are named by role, as the API's are:
    # CAPTIONER_WORKER_METRICS_PORT beside CAPTIONER_API_METRICS_PORT.
    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_", frozen=True, extra="ignore", populate_by_name=True
    )

    model: str = "microsoft/git-base-textcaps"
    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="the model's public name in replies; default: a hub id as given, a directory's own name",
    )
    model_revision: str | None = Field(
        default=None,
        pattern=f"^{REVISION.pattern}$",
        description="a hub model's branch, tag or commit (from_pretrained's revision); a local directory's "
        "name for its contents in caption-cache keys",
    )
    decoder: Literal["hf", "fast"] = "fast"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantize: Literal["none", "int8"] = "none"
    packed_cpu_weights: bool = Field(
        default=False, description="fast decoder: oneDNN-packed fp32 weights on CPU (not bit-identical)"
    )
    pad_decoding_steps_from: int = Field(
        default=11,
        ge=0,
        le=16,
        description="fast decoder, float32 on an AVX-512 CPU: a decoding step of this many to 15 unfinished "
        "captions runs as 16 rows, where MKL's GEMM is faster (0: never)",
    )
    vision_attention: Literal["eager", "sdpa"] = Field(
        default="eager",
        description="the image encoder's attention: sdpa runs it fused (faster, not bit-identical to HF's)",
    )
    worker_threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = all cores")
    worker_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="workers this process forks after its imports, which they then share (ids <id>-1.., "
        "metrics ports up from CAPTIONER_WORKER_METRICS_PORT, the cores split unless "
        "CAPTIONER_WORKER_THREADS is set); 1 = this process is the worker",
    )
    worker_group_id: str = "captioner-workers"
    reply_topic_pattern: re.Pattern[str] | None = Field(
        default=None,
        description="when set, a request's reply_topic must match this regular expression (full match)",
    )
    worker_id: str = Field(default_factory=_default_instance_id)
    max_new_tokens: int = Field(default=20, ge=1, le=512)
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
    decode_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="the longest a worker waits for one image once its decoding started (then the job "
        "fails image_too_costly), and for a decode thread to start it while the pool finishes nothing "
        "(then the job is retried)",
    )
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
        validation_alias=renamed("CAPTIONER_WORKER_SHUTDOWN_TIMEOUT_S", was="CAPTIONER_SHUTDOWN_TIMEOUT_S"),
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
    delivery_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        default="at_least_once",
        description="exactly_once: each batch's outcomes and the offsets they finish are one Kafka "
        "transaction; at_least_once: outcomes are produced at once and offsets committed after them",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        validation_alias=renamed("CAPTIONER_WORKER_METRICS_PORT", was="CAPTIONER_METRICS_PORT"),
        description="Prometheus /metrics port; 0 = off",
    )

    @model_validator(mode="after")
    def _metrics_ports_fit(self) -> Self:
        if self.metrics_port and self.metrics_port + self.worker_processes - 1 > 65535:
            raise ValueError(
                f"CAPTIONER_WORKER_METRICS_PORT {self.metrics_port} leaves no port for each of "
                f"CAPTIONER_WORKER_PROCESSES={self.worker_processes} workers"
            )
        return self

    @property
    def retry_group_id(self) -> str:
        """The retry tiers' own consumer group, so they never crowd the request topic's assignment."""
        return f"{self.worker_group_id}.retries"

    @property
    def exactly_once(self) -> bool:
        return self.delivery_guarantee == "exactly_once"

    @property
    def transactional_id(self) -> str:
        """This worker instance's transactional id (exactly once): one per worker id, under its group's
        prefix, which the ACLs grant (captioner/acls.py)."""
        return f"{transactional_id_prefix(self.worker_group_id)}{self.worker_id}"


def transactional_id_prefix(worker_group_id: str) -> str:
    """Every worker of a group names its transactions with this prefix: `<group>.txn.`"""
    return f"{worker_group_id}.txn."


class CacheSettings(BaseSettings):
    """The caption cache (docs/caption-cache.md): workers sign and write it, API instances verify and
    read it. An API instance serves only entries of the profile its own settings give: the model
    (CAPTIONER_MODEL, CAPTIONER_MODEL_ID) and CAPTIONER_MAX_NEW_TOKENS exactly, and the revision, dtype,
    quantization and image pipeline its workers resolved wherever it leaves them at their default (auto,
    unset) rather than naming one."""

    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_CACHE_", frozen=True, extra="ignore", populate_by_name=True
    )

    enabled: bool = True
    signing_key_file: Path | None = Field(
        default=None, description="workers: the PEM Ed25519 private key entries are signed with"
    )
    verify_keys_file: Path | None = Field(
        default=None, description="API: the PEM Ed25519 public key(s) an entry's signature must be from"
    )
    scope: Literal["shared", "per_key"] = Field(
        default="shared", description="per_key: each API key's callers see only the titles they asked for"
    )
    model: str = Field(
        default=WorkerSettings.model_fields["model"].default, validation_alias="CAPTIONER_MODEL"
    )
    model_id: str | None = Field(
        default=None, min_length=1, max_length=256, validation_alias="CAPTIONER_MODEL_ID"
    )
    model_revision: str | None = Field(
        default=None, pattern=f"^{REVISION.pattern}$", validation_alias="CAPTIONER_MODEL_REVISION"
    )
    max_new_tokens: int = Field(
        default=WorkerSettings.model_fields["max_new_tokens"].default,
        ge=1,
        le=512,
        validation_alias="CAPTIONER_MAX_NEW_TOKENS",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", validation_alias="CAPTIONER_DTYPE"
    )
    quantize: Literal["none", "int8"] = Field(default="none", validation_alias="CAPTIONER_QUANTIZE")
    image_pipeline: Literal["auto", "pil", "tensor"] = Field(
        default="auto", validation_alias="CAPTIONER_IMAGE_PIPELINE"
    )


class ClientSettings(BaseSettings):
    """The operator tools as the API's clients (`captioner caption --via http`)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_", frozen=True, extra="ignore")

    api_key: SecretStr | None = Field(
        default=None, description="the API key `captioner caption` sends (Authorization: Bearer)"
    )


class RegistrySettings(BaseSettings):
    """A Confluent-compatible Schema Registry (docs/schema-registry.md). With a URL, the API writes
    requests and workers write replies and caption-cache entries in the Confluent wire format; readers
    take both framings either way. Without one, nothing is framed for a registry."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONER_SCHEMA_REGISTRY_", frozen=True, extra="ignore")

    url: str | None = Field(
        default=None, min_length=1, description="e.g. http://registry:8080/apis/ccompat/v7 (Apicurio)"
    )
    user: str | None = Field(default=None, description="HTTP basic-auth user")
    password: SecretStr | None = Field(default=None, description="HTTP basic-auth password")
    ca_location: str | None = Field(default=None, description="CA certificate(s) of an https registry")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="one registry HTTP request's time limit")
    max_cached_schemas: int = Field(
        default=1000, ge=1, description="writer schemas by id kept in memory (least recently used out)"
    )
    unknown_id_ttl_s: float = Field(
        default=60.0, ge=0, description="how long an id the registry does not know is answered from memory"
    )
    lookups_per_s: float = Field(
        default=10.0, gt=0, description="ids not yet cached looked up a second at most; more are retried"
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
    "client": ClientSettings,
    "schema_registry": RegistrySettings,
}
PREFIX = "CAPTIONER_"


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
        # An error of a whole group (its own validator) names its variables in its message.
        problems = [
            f"{names.get(str(error['loc'][0]), error['loc'][0])}: {error['msg']}"
            if error["loc"]
            else error["msg"]
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
    return frozenset(names)


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
        + "; every setting is listed in docs/settings.md"
    )


def deprecation_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line for each old variable name set (RENAMED): still read, to be renamed."""
    names = {name.upper() for name in (os.environ if environ is None else environ)}
    return [
        f"{old} is deprecated: it is read as {new}; rename it"
        for old, new in sorted(RENAMED.items())
        if old in names
    ]


def effective_settings() -> dict[str, dict[str, Any]]:
    """Each group's values as the services would read them now, by variable name; secrets masked."""
    effective = {}
    for name, group in SETTINGS_GROUPS.items():
        values = load_settings(group).model_dump(mode="json")
        effective[name] = {variable: values[field] for field, variable in variable_names(group).items()}
    return effective
