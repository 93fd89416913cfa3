"""Client and topic settings that decide how the service rides out a broker failure."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer

from core.kafka_config import client_config, consumer_config, producer_config
from core.settings import ApiSettings, KafkaSettings, TopicSettings
from core.topics import min_insync_replicas, topic_specs

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")
TOPICS = TopicSettings()


def test_a_hung_broker_is_given_up_on_well_within_a_request_timeout() -> None:
    config = client_config(KAFKA, client_id="c")
    api_timeout_ms = ApiSettings().request_timeout_s * 1000

    assert config["socket.timeout.ms"] <= api_timeout_ms / 2
    assert config["socket.connection.setup.timeout.ms"] <= api_timeout_ms / 2


def test_clients_look_for_moved_leaders_every_few_seconds() -> None:
    config = client_config(KAFKA, client_id="c")

    assert config["topic.metadata.refresh.interval.ms"] <= 10_000
    assert config["metadata.max.age.ms"] >= config["topic.metadata.refresh.interval.ms"]


def test_a_produce_waiting_on_replicas_is_answered_before_the_client_gives_up() -> None:
    config = producer_config(KAFKA, TOPICS, client_id="p")

    assert config["request.timeout.ms"] < config["socket.timeout.ms"]
    assert config["max.in.flight.requests.per.connection"] <= 5  # idempotence keeps order only up to 5
    Producer(config | {"message.timeout.ms": 15_000})  # librdkafka accepts the combination


@pytest.mark.parametrize("session_ms", [1_000, 6_000, 10_000, 45_000])
def test_group_heartbeats_fit_three_times_in_the_session(session_ms: int) -> None:
    config = consumer_config(KAFKA, TOPICS, client_id="c", group_id="g", **{"session.timeout.ms": session_ms})

    assert config["heartbeat.interval.ms"] * 3 <= session_ms
    Consumer(config).close()


def test_an_explicit_heartbeat_is_kept() -> None:
    config = consumer_config(
        KAFKA,
        TOPICS,
        client_id="c",
        group_id="g",
        **{"session.timeout.ms": 6_000, "heartbeat.interval.ms": 500},
    )

    assert config["heartbeat.interval.ms"] == 500


@pytest.mark.parametrize(("replicas", "in_sync"), [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3)])
def test_topics_require_a_majority_of_three_or_more_replicas(replicas: int, in_sync: int) -> None:
    assert min_insync_replicas(replicas) == in_sync
    for spec in topic_specs(TOPICS):
        topic = spec.new_topic(replication_factor=replicas, max_message_bytes=TOPICS.max_message_bytes)
        assert topic.config["min.insync.replicas"] == str(in_sync)


def test_tls_settings_reach_librdkafka_and_the_key_password_stays_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPTIONER_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("CAPTIONER_KAFKA_SSL_CA_LOCATION", "/etc/kafka/ca.pem")
    monkeypatch.setenv("CAPTIONER_KAFKA_SSL_CERTIFICATE_LOCATION", "/etc/kafka/client.pem")
    monkeypatch.setenv("CAPTIONER_KAFKA_SSL_KEY_LOCATION", "/etc/kafka/client.key")
    monkeypatch.setenv("CAPTIONER_KAFKA_SSL_KEY_PASSWORD", "s3cret-key-pass")
    settings = KafkaSettings()

    config = client_config(settings, client_id="c")

    assert config["security.protocol"] == "SSL"
    assert config["ssl.ca.location"] == "/etc/kafka/ca.pem"
    assert config["ssl.certificate.location"] == "/etc/kafka/client.pem"
    assert config["ssl.key.location"] == "/etc/kafka/client.key"
    assert config["ssl.key.password"] == "s3cret-key-pass"
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cret-key-pass" not in shown


def test_no_tls_settings_leave_librdkafkas_defaults() -> None:
    assert not [key for key in client_config(KAFKA, client_id="c") if key.startswith("ssl.")]
