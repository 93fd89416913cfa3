from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.kafka_config import client_config, consumer_config, producer_config
from core.settings import ApiSettings, KafkaSettings, TopicSettings, WorkerSettings


def test_bootstrap_servers_come_from_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    assert KafkaSettings().bootstrap_servers == "broker-a:9092,broker-b:9092"


def test_bootstrap_servers_given_in_code_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    assert KafkaSettings(bootstrap_servers="given:9092").bootstrap_servers == "given:9092"


def test_secrets_stay_hidden_until_they_reach_librdkafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONER_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("CAPTIONER_KAFKA_SASL_USERNAME", "svc")
    settings = KafkaSettings()
    assert "hunter2" not in repr(settings)
    assert client_config(settings, client_id="x")["sasl.password"] == "hunter2"


def test_settings_are_frozen() -> None:
    settings = ApiSettings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_defaults_match_the_contract() -> None:
    assert ApiSettings().port == 9000
    assert TopicSettings().request_partitions == 6
    assert WorkerSettings().model == "microsoft/git-base-textcaps"


def test_retry_topics_follow_the_delay_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONER_TOPIC_RETRY_DELAYS_S", "[1, 2]")
    assert TopicSettings().retry_topics == ["captioner.requests.retry.1", "captioner.requests.retry.2"]


def test_producers_are_idempotent_and_consumers_store_offsets_manually() -> None:
    kafka, topics = KafkaSettings(), TopicSettings()
    producer = producer_config(kafka, topics, client_id="p")
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    consumer = consumer_config(kafka, topics, client_id="c", group_id="g")
    assert consumer["enable.auto.offset.store"] is False


def test_the_known_variables_include_every_alias_a_setting_reads() -> None:
    from core.settings import known_variables

    assert {"KAFKA_BOOTSTRAP_SERVERS", "CAPTIONER_KAFKA_BOOTSTRAP_SERVERS"} <= known_variables()
