"""The command line as operators run it: a real `captioner` process."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from captioner.processes import CAPTIONER


def captioner(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("CAPTIONER_")}
    return subprocess.run(
        [CAPTIONER, *args], env=inherited | env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_mistyped_setting_stops_the_process_and_is_named() -> None:
    done = captioner("config", CAPTIONER_KAFKA_SSL_CA_LOCATON="/etc/kafka/ca.pem")

    assert done.returncode != 0
    assert "CAPTIONER_KAFKA_SSL_CA_LOCATON" in done.stderr
    assert "did you mean CAPTIONER_KAFKA_SSL_CA_LOCATION" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["topics", "create"], ["worker"], ["api"]])
def test_every_command_refuses_unknown_settings_before_it_starts(command: list[str]) -> None:
    done = captioner(*command, CAPTIONER_API_REQUEST_TIMOUT_S="5", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")

    assert done.returncode == 2
    assert "CAPTIONER_API_REQUEST_TIMOUT_S (did you mean CAPTIONER_API_REQUEST_TIMEOUT_S?)" in done.stderr


def test_the_test_harness_variables_are_allowed() -> None:
    done = captioner("config", CAPTIONER_TEST_BROKER_PORT="19999")

    assert done.returncode == 0, done.stderr


def test_config_prints_every_group_with_secrets_masked() -> None:
    done = captioner(
        "config",
        CAPTIONER_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        CAPTIONER_KAFKA_SASL_USERNAME="svc-captioner",
        CAPTIONER_KAFKA_SASL_PASSWORD="hunter2-sasl-secret",
        CAPTIONER_KAFKA_SSL_KEY_PASSWORD="hunter3-key-secret",
        CAPTIONER_SCHEMA_REGISTRY_PASSWORD="hunter4-registry-secret",
        CAPTIONER_MAX_BATCH_SIZE="8",
    )

    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "hunter3" not in done.stdout + done.stderr
    assert "hunter4" not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert set(shown) == {
        "kafka",
        "topics",
        "api",
        "worker",
        "images",
        "log",
        "tracing",
        "cache",
        "schema_registry",
    }
    assert shown["schema_registry"]["CAPTIONER_SCHEMA_REGISTRY_PASSWORD"] == "**********"
    assert shown["kafka"]["CAPTIONER_KAFKA_SASL_PASSWORD"] == "**********"
    assert shown["kafka"]["CAPTIONER_KAFKA_SSL_KEY_PASSWORD"] == "**********"
    assert shown["kafka"]["CAPTIONER_KAFKA_SASL_USERNAME"] == "svc-captioner"
    assert shown["worker"]["CAPTIONER_MAX_BATCH_SIZE"] == 8
    assert shown["topics"]["CAPTIONER_TOPIC_RETRY_DELAYS_S"] == [1.0, 5.0, 30.0]


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (["api"], "CAPTIONER_API_PORT"),
        (["worker"], "CAPTIONER_MAX_BATCH_SIZE"),
        (["topics", "create"], "CAPTIONER_KAFKA_REPLICATION_FACTOR"),
        (["dlq", "list"], "CAPTIONER_TOPIC_REQUEST_PARTITIONS"),
        (["config"], "CAPTIONER_MAX_IMAGE_PIXELS"),
        (["api"], "CAPTIONER_TOPIC_RETRY_DELAYS_S"),
    ],
)
def test_a_bad_setting_value_is_one_line_naming_the_variable_and_exit_2(
    command: list[str], variable: str
) -> None:
    done = captioner(*command, **{variable: "notanumber"}, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"captioner: invalid setting: {variable}: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "notanumber" not in done.stderr  # a value is never echoed: it may be a secret
