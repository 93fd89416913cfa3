"""Every topic the service uses, defined once; at start-up each process checks that its topics exist and
creates those missing only where it may (the operator's `captioner topics create` creates them all)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from core.errors import CaptionerError, KafkaTimeoutError
from core.kafka_config import client_config
from core.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)

_HOUR_MS = 3_600_000
# Retry and dead-letter records carry a job's bytes unchanged plus the service's headers (a few KiB:
# the error message, the last 4000 characters of its traceback, where it came from): their topics take
# this much more than the request topic, so a job that fit there always fits there too.
OUTCOME_HEADROOM_BYTES = 64 * 1024
CAPTION_CACHE_MAX_BATCH_BYTES = 1024 * 1024


class TopicsMissingError(CaptionerError):
    """Topics a process needs do not exist and its principal may not create them: the operator creates
    them (`captioner topics create`). A start-up error: no caller ever sees it."""

    code = "topics_missing"


class TopicNotAuthorizedError(CaptionerError):
    """The cluster will not even say whether a topic exists: the principal has no ACL on it."""

    code = "topic_not_authorized"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)

    def new_topic(self, *, replication_factor: int, max_message_bytes: int) -> NewTopic:
        config = {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "max.message.bytes": str(max_message_bytes),
            "min.insync.replicas": str(min_insync_replicas(replication_factor)),
            **self.extra,
        }
        return NewTopic(
            self.name, num_partitions=self.partitions, replication_factor=replication_factor, config=config
        )


def min_insync_replicas(replication_factor: int) -> int:
    """A majority of the replicas once there are three or more: an acks=all write is then on two brokers
    before anyone is told it is, and one broker can be lost without stopping writes. Set on each topic,
    because Kafka's own default (1) would let a write acknowledged by a lone leader vanish with it. Below
    three replicas, requiring both would stop every write when either broker is down."""
    return replication_factor // 2 + 1 if replication_factor >= 3 else 1


# The caption cache keeps the latest entry of each key for good. Compaction never touches the active
# segment, so segments roll hourly (or at 64 MiB) for replaced entries to go within hours, not Kafka's
# default week; an entry made a tombstone (deleted) stays readable a day, long enough for every reader.
CAPTION_CACHE_CONFIG = {
    "segment.ms": str(_HOUR_MS),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.5",
    "delete.retention.ms": str(24 * _HOUR_MS),
    # The limit applies to a whole batch of records: librdkafka's batches (batch.size, 1 MB) fit; a single
    # record above MAX_ENTRY_BYTES is skipped by its readers.
    "max.message.bytes": str(CAPTION_CACHE_MAX_BATCH_BYTES),
}


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """Requests and retries keep a day; replies matter only while a caller waits; dead letters two weeks;
    the caption cache is compacted (the latest entry of each key, kept until replaced or deleted)."""
    with_headroom = {"max.message.bytes": str(topics.max_message_bytes + OUTCOME_HEADROOM_BYTES)}
    return [
        TopicSpec(topics.requests, topics.request_partitions, retention_ms=24 * _HOUR_MS),
        TopicSpec(topics.replies, topics.reply_partitions, retention_ms=1 * _HOUR_MS),
        *(
            TopicSpec(name, topics.request_partitions, retention_ms=24 * _HOUR_MS, extra=with_headroom)
            for name in topics.retry_topics
        ),
        TopicSpec(
            topics.dead_letter,
            topics.request_partitions,
            retention_ms=14 * 24 * _HOUR_MS,
            extra=with_headroom,
        ),
        TopicSpec(
            topics.captions,
            topics.request_partitions,
            retention_ms=-1,
            cleanup_policy="compact",
            extra=CAPTION_CACHE_CONFIG,
        ),
    ]


def api_topic_names(topics: TopicSettings, *, cache: bool) -> list[str]:
    """The topics an API instance uses: all it checks at start (its ACLs let it see no others)."""
    return [topics.requests, topics.replies, *([topics.captions] if cache else [])]


def ensure_topics(
    kafka: KafkaSettings,
    topics: TopicSettings,
    *,
    names: Collection[str] | None = None,
    timeout_s: float = 30.0,
    client_log: logging.Logger | None = None,
) -> list[str]:
    """Check that the topics `names` (default: all of them) exist and create those missing. A process
    that finds them all needs no right to create topics; one that finds some missing and may not create
    them raises TopicsMissingError, which tells the operator to run `captioner topics create`. Returns
    the names created."""
    specs = [spec for spec in topic_specs(topics) if names is None or spec.name in names]
    try:
        return create_topics(
            kafka, specs, topics.max_message_bytes, timeout_s=timeout_s, client_log=client_log
        )
    except TopicsMissingError as exc:
        raise TopicsMissingError(
            f"{exc.message}: run `captioner topics create` as the operator", detail=exc.detail
        ) from None


def create_topics(
    kafka: KafkaSettings,
    specs: list[TopicSpec],
    max_message_bytes: int,
    *,
    timeout_s: float = 30.0,
    client_log: logging.Logger | None = None,
) -> list[str]:
    """Create the topics of `specs` that are missing and wait until every one has partition leaders.
    Only missing topics are asked for: a cluster with an authorizer refuses CreateTopics to a principal
    without CREATE even for topics that exist. `client_log` takes librdkafka's own log lines, which
    otherwise go straight to stderr."""
    admin = _admin(kafka, client_log)
    missing = set(missing_topics(admin, [spec.name for spec in specs], kafka=kafka, timeout_s=timeout_s))
    new_topics = [
        spec.new_topic(replication_factor=kafka.replication_factor, max_message_bytes=max_message_bytes)
        for spec in specs
        if spec.name in missing
    ]
    created, refused = _created(admin, new_topics, timeout_s=timeout_s) if new_topics else ([], [])
    if refused:
        raise TopicsMissingError(
            f"{_plural('topic', refused)} {', '.join(sorted(refused))} "
            f"{'does' if len(refused) == 1 else 'do'} not exist and {_principal(kafka)} may not create "
            f"{'it' if len(refused) == 1 else 'them'}",
            detail="CreateTopics: TOPIC_AUTHORIZATION_FAILED",
        )
    if created:
        log.info("created topics %s", ", ".join(created))
    _wait_for_leaders(admin, [spec.name for spec in specs], timeout_s=timeout_s)
    return created


def _created(
    admin: AdminClient, new_topics: list[NewTopic], *, timeout_s: float
) -> tuple[list[str], list[str]]:
    """Asks for the topics; returns those created and those this principal may not create. One that
    another process created meanwhile is neither."""
    futures = admin.create_topics(new_topics, operation_timeout=timeout_s, request_timeout=timeout_s)
    created, refused = [], []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except TimeoutError:
            raise KafkaTimeoutError(f"topic {name} not created within {timeout_s:g} s") from None
        except KafkaException as exc:
            code = exc.args[0].code()
            if code in _NOT_AUTHORIZED:
                refused.append(name)
            elif code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created, refused


_NOT_AUTHORIZED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}


def missing_topics(
    admin: AdminClient, names: list[str], *, kafka: KafkaSettings, timeout_s: float
) -> list[str]:
    """Which of `names` do not exist, asked topic by topic (DescribeTopics, which never creates one). A
    topic the principal may not describe is an error: the cluster then will not say whether it exists."""
    if not names:
        return []
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout_s)
    missing, hidden = [], []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except TimeoutError:
            raise KafkaTimeoutError(f"topic {name} not described within {timeout_s:g} s") from None
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                missing.append(name)
            elif code in _NOT_AUTHORIZED:
                hidden.append(name)
            else:
                raise
    if hidden:
        raise TopicNotAuthorizedError(
            f"{_principal(kafka)} may not describe {_plural('topic', hidden)} {', '.join(sorted(hidden))} "
            "(no ACL allows it; see `captioner topics acls`)",
            detail="DescribeTopics: TOPIC_AUTHORIZATION_FAILED",
        )
    return missing


def _principal(kafka: KafkaSettings) -> str:
    return f"User:{kafka.sasl_username}" if kafka.sasl_username else "this client"


def _plural(noun: str, items: Collection[object]) -> str:
    return noun if len(items) == 1 else f"{noun}s"


def delete_topics(
    kafka: KafkaSettings,
    names: list[str],
    *,
    timeout_s: float = 30.0,
    client_log: logging.Logger | None = None,
) -> None:
    """Delete topics; one that is already gone is not an error."""
    admin = _admin(kafka, client_log)
    futures = admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except TimeoutError:
            raise KafkaTimeoutError(f"topic {name} not deleted within {timeout_s:g} s") from None
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def _admin(kafka: KafkaSettings, client_log: logging.Logger | None) -> AdminClient:
    config = client_config(kafka, client_id="captioner-admin")
    return AdminClient(config if client_log is None else config | {"logger": client_log})


def _wait_for_leaders(admin: AdminClient, names: list[str], *, timeout_s: float) -> None:
    """A created topic takes a moment to elect partition leaders; until then clients get NOT_LEADER."""
    give_up = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        waiting = [
            name
            for name in names
            if name not in metadata.topics
            or metadata.topics[name].error is not None
            or any(p.leader < 0 for p in metadata.topics[name].partitions.values())
        ]
        if not waiting:
            return
        if time.monotonic() > give_up:
            raise KafkaTimeoutError(f"topics without partition leaders after {timeout_s:g} s: {waiting}")
        time.sleep(0.1)
