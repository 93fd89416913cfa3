"""librdkafka configuration for every client the project makes, built from settings in one place.

The failover settings (docs/replicated-cluster.md) bound how long a client keeps talking to a
broker that has died or hangs, and how soon it learns a partition's new leader.
"""

from __future__ import annotations

from typing import Any

from core.settings import KafkaSettings, TopicSettings

# An API instance's client ids, and the group ids its assign()-only consumers must still name, start with
# this; the ACLs (captioner/acls.py) grant by it.
API_CLIENT_PREFIX = "captioner-api-"
_SOCKET_TIMEOUT_MS = 10_000
# Kafka's rule: heartbeats at most a third of the session timeout, so two can be lost before the group
# gives up.
_HEARTBEATS_PER_SESSION = 3
_METADATA_PROPAGATION_MS = 30_000  # librdkafka's default
# A worker's transaction lasts one commit: its records' deliveries (each bounded by the delivery timeout)
# and a few round trips to the coordinators. The coordinator aborts one still open this much later.
_TRANSACTION_MARGIN_MS = 10_000
# Every reader sees only records of committed transactions, never those a worker aborted
# (docs/failure-handling.md, "Delivery guarantees"). librdkafka's default too, stated: Kafka's Java clients
# default to read_uncommitted.
READ_COMMITTED: dict[str, Any] = {"isolation.level": "read_committed"}


def client_config(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id,
        "security.protocol": kafka.security_protocol,
        "socket.keepalive.enable": True,
        "reconnect.backoff.max.ms": 1000,
        # A broker that hangs (paused, cut off) keeps its TCP connections open: librdkafka's default 60 s
        # wait for an answer outlasts the API's whole request timeout. 10 s stays above the 9 s it takes a
        # cluster with default settings to fence a lost broker, so a produce waiting on a lost follower is
        # not cut off.
        "socket.timeout.ms": _SOCKET_TIMEOUT_MS,
        "socket.connection.setup.timeout.ms": 10_000,  # a cut-off broker drops SYNs: not 30 s per attempt
        # Errors trigger a metadata refresh at once; this periodic one catches leader moves that raise none
        # (a hung leader, leadership handed back to a returning broker). Default: every 5 min.
        "topic.metadata.refresh.interval.ms": 5_000,
        "metadata.max.age.ms": 15_000,
    }
    if kafka.debug:
        config["debug"] = kafka.debug
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        config["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password:
        config["sasl.password"] = kafka.sasl_password.get_secret_value()
    return config | _tls_config(kafka)


def _tls_config(kafka: KafkaSettings) -> dict[str, str]:
    """Only what is set: librdkafka's defaults (the system's CA store) stay in force otherwise."""
    config = {
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
    }
    if kafka.ssl_key_password:
        config["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    return {key: value for key, value in config.items() if value}


def producer_config(
    kafka: KafkaSettings, topics: TopicSettings, *, client_id: str, linger_ms: float = 0.0
) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder a partition's records. No linger by
    default: a caller waits on every record, and under load librdkafka still batches whatever queues up
    behind the requests in flight, so a linger would only delay idle round trips
    (docs/replicated-cluster.md)."""
    return client_config(kafka, client_id=client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": linger_ms,
        "message.max.bytes": topics.max_message_bytes,
        "compression.type": "none",  # image bytes are already compressed
        # Keyed records go where Kafka's Java clients and Kafka Streams put them (murmur2), not where
        # librdkafka's default CRC32 would: consumers of a reply topic may partition by the same rule.
        "partitioner": "murmur2_random",
        # The most that keeps an idempotent producer's ordering across retries (librdkafka's own cap, stated).
        "max.in.flight.requests.per.connection": 5,
        # How long a broker may hold a produce waiting for the in-sync replicas: it answers (a retriable
        # timeout) before the client's socket timeout, so the connection survives and the retry goes out at
        # once.
        "request.timeout.ms": _SOCKET_TIMEOUT_MS - 2_000,
    }


def delivery_bound(timeout_s: float) -> dict[str, Any]:
    """A record the broker has not acknowledged within timeout_s fails with a delivery report
    (`_MSG_TIMED_OUT`), whatever holds it: a partition without a leader, a topic that answers only with
    retriable errors, or one deleted after the record was queued (librdkafka waits for a topic missing from
    its metadata up to topic.metadata.propagation.max.ms, 30 s by default, before failing its records)."""
    timeout_ms = max(1, round(timeout_s * 1000))
    return {
        "message.timeout.ms": timeout_ms,
        "topic.metadata.propagation.max.ms": min(_METADATA_PROPAGATION_MS, timeout_ms),
    }


def transactional(transactional_id: str, *, delivery_timeout_s: float) -> dict[str, Any]:
    """A transactional producer (exactly once). librdkafka wants every record's delivery bound
    (`message.timeout.ms`, delivery_bound) within the transaction timeout; the coordinator aborts a
    transaction still open after it, such as one whose worker died mid-commit, whose records until then
    hold back read_committed readers of the partitions it wrote."""
    return {
        "transactional.id": transactional_id,
        "transaction.timeout.ms": round(transaction_timeout_s(delivery_timeout_s) * 1000),
    }


def transaction_timeout_s(delivery_timeout_s: float) -> float:
    """How long a transaction may stay open (`transaction.timeout.ms`) before its coordinator aborts it."""
    return max(1, round(delivery_timeout_s * 1000)) / 1000 + _TRANSACTION_MARGIN_MS / 1000


def consumer_config(
    kafka: KafkaSettings, topics: TopicSettings, *, client_id: str, group_id: str, **overrides: Any
) -> dict[str, Any]:
    """A group consumer that commits only offsets the application has stored after processing, and reads
    only committed records."""
    config = (
        client_config(kafka, client_id=client_id)
        | READ_COMMITTED
        | {
            "group.id": group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.max.bytes": max(52428800, topics.max_message_bytes),
            "max.partition.fetch.bytes": topics.max_message_bytes,
        }
    )
    config |= overrides
    if "session.timeout.ms" in overrides and "heartbeat.interval.ms" not in overrides:
        config["heartbeat.interval.ms"] = max(
            1, int(overrides["session.timeout.ms"]) // _HEARTBEATS_PER_SESSION
        )
    return config
