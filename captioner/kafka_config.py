"""librdkafka configuration for every client the project makes, built from settings in one place."""

from __future__ import annotations

from typing import Any

from captioner.settings import KafkaSettings, TopicSettings


def client_config(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id,
        "security.protocol": kafka.security_protocol,
        "socket.keepalive.enable": True,
        "reconnect.backoff.max.ms": 1000,
    }
    if kafka.debug:
        config["debug"] = kafka.debug
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        config["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password:
        config["sasl.password"] = kafka.sasl_password.get_secret_value()
    return config


def producer_config(
    kafka: KafkaSettings, topics: TopicSettings, *, client_id: str, linger_ms: float = 0.0
) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder a partition's records. No linger by
    default: a caller waits on every record, and under load librdkafka still batches whatever queues up
    behind the requests in flight (a 1 ms linger cost ~3 ms per idle round trip and bought no capacity)."""
    return client_config(kafka, client_id=client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": linger_ms,
        "message.max.bytes": topics.max_message_bytes,
        "compression.type": "none",  # image bytes are already compressed
    }


def consumer_config(
    kafka: KafkaSettings, topics: TopicSettings, *, client_id: str, group_id: str, **overrides: Any
) -> dict[str, Any]:
    """A group consumer that commits only offsets the application has stored after processing."""
    config = client_config(kafka, client_id=client_id) | {
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.max.bytes": max(52428800, topics.max_message_bytes),
        "max.partition.fetch.bytes": topics.max_message_bytes,
    }
    return config | overrides
