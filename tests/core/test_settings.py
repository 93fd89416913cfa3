from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.kafka_config import client_config, consumer_config, producer_config
from core.settings import (
    MIN_API_KEY_CHARS,
    ApiSettings,
    InvalidSettingError,
    KafkaSettings,
    TopicSettings,
    UnknownSettingError,
    WorkerSettings,
    deprecation_warnings,
    load_settings,
    refuse_unknown_variables,
    variable_names,
)


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


KEY = "k" * MIN_API_KEY_CHARS
SHORT_SECRET = "short-secret-key"


def api_settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettingError) as refused:
        load_settings(ApiSettings)
    return refused.value.message


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("# the operators' keys\n\n   \n#another comment\n", "CAPTIONER_API_KEYS_FILE: no API key"),
        (
            f"# keys\n{KEY}\n\n{SHORT_SECRET}\n",
            "CAPTIONER_API_KEYS_FILE, line 4: an API key must be at least 32",
        ),
        (f"{KEY[:-1]} {KEY}\n", "CAPTIONER_API_KEYS_FILE, line 1: an API key must be"),
        ("", "CAPTIONER_API_KEYS_FILE: no API key"),
    ],
)
def test_a_keys_file_without_usable_keys_is_refused_naming_the_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, named: str
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(content)

    message = api_settings_error(monkeypatch, CAPTIONER_API_KEYS_FILE=str(keys_file))

    assert message.startswith(f"invalid setting: {named}"), message
    assert SHORT_SECRET not in message and KEY not in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CAPTIONER_API_KEYS": " , "}, "CAPTIONER_API_KEYS: no API key"),
        ({"CAPTIONER_API_KEYS": ""}, "CAPTIONER_API_KEYS: no API key"),
        ({"CAPTIONER_API_KEYS": f"{KEY},{SHORT_SECRET}"}, "CAPTIONER_API_KEYS, key 2: an API key must"),
        ({"CAPTIONER_API_AUTH": "required"}, "CAPTIONER_API_AUTH=required, but no key is set"),
        ({"CAPTIONER_API_AUTH": "off", "CAPTIONER_API_KEYS": KEY}, "CAPTIONER_API_AUTH=off, but"),
        ({"CAPTIONER_API_KEYS_FILE": "/nonexistent/keys"}, "CAPTIONER_API_KEYS_FILE cannot be read"),
    ],
)
def test_keys_settings_that_would_leave_the_api_open_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    message = api_settings_error(monkeypatch, **env)

    assert message.startswith(f"invalid setting: {named}"), message
    assert SHORT_SECRET not in message and KEY not in message


def test_a_stop_waits_past_the_request_timeout_by_default() -> None:
    assert ApiSettings(request_timeout_s=12).drain_timeout_s > 12
    assert ApiSettings(request_timeout_s=12, shutdown_timeout_s=3).drain_timeout_s == 3


@pytest.mark.parametrize("variable", ["CAPTIONER_MIN_NEW_TOKENS", "CAPTIONER_CHAOS_FAILING_BATCHES"])
def test_the_service_has_no_setting_for_benchmarks_or_drills(variable: str) -> None:
    """Forced caption lengths and injected failures are the harness's (tests/support/harness_worker.py)."""
    with pytest.raises(UnknownSettingError):
        refuse_unknown_variables({variable: "1"})


def test_a_setting_both_roles_have_for_their_own_process_is_named_by_role() -> None:
    """CAPTIONER_API_METRICS_PORT and CAPTIONER_WORKER_METRICS_PORT, not CAPTIONER_METRICS_PORT. (Both
    read the workers' consumer group, which is one setting.)"""
    shared = (ApiSettings.model_fields.keys() & WorkerSettings.model_fields.keys()) - {"worker_group_id"}
    api, worker = variable_names(ApiSettings), variable_names(WorkerSettings)

    assert shared
    for field in shared:
        assert api[field] == f"CAPTIONER_API_{field.upper()}"
        assert worker[field] == f"CAPTIONER_WORKER_{field.upper()}"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("CAPTIONER_METRICS_PORT", "CAPTIONER_WORKER_METRICS_PORT", "metrics_port"),
        ("CAPTIONER_SHUTDOWN_TIMEOUT_S", "CAPTIONER_WORKER_SHUTDOWN_TIMEOUT_S", "shutdown_timeout_s"),
    ],
)
def test_an_old_name_is_still_read_and_said_to_be_deprecated(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str, field: str
) -> None:
    monkeypatch.setenv(old, "9100")

    refuse_unknown_variables()
    assert getattr(load_settings(WorkerSettings), field) == 9100
    assert deprecation_warnings() == [f"{old} is deprecated: it is read as {new}; rename it"]

    monkeypatch.setenv(new, "9200")  # the new name wins
    assert getattr(load_settings(WorkerSettings), field) == 9200
