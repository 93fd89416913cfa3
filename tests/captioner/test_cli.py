"""The command line as operators run it: a real `captioner` process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import CAPTIONER


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


def test_no_captioner_variable_is_let_through_for_the_test_harness() -> None:
    """The harness's own variables sit outside the CAPTIONER_ prefix, so the check knows no exceptions."""
    refused = captioner("config", CAPTIONER_TEST_BROKER_PORT="19999")
    harness = captioner("config", TEST_KAFKA_PORT="19999")

    assert refused.returncode == 2
    assert "unknown setting: CAPTIONER_TEST_BROKER_PORT" in refused.stderr
    assert harness.returncode == 0, harness.stderr


def test_an_old_setting_name_works_and_is_said_to_be_deprecated_once_at_start() -> None:
    done = captioner("config", CAPTIONER_METRICS_PORT="9100")

    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "captioner: CAPTIONER_METRICS_PORT is deprecated: it is read as CAPTIONER_WORKER_METRICS_PORT; "
        "rename it"
    ]
    assert json.loads(done.stdout)["worker"]["CAPTIONER_WORKER_METRICS_PORT"] == 9100


def test_config_prints_every_group_with_secrets_masked() -> None:
    done = captioner(
        "config",
        CAPTIONER_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        CAPTIONER_KAFKA_SASL_USERNAME="svc-captioner",
        CAPTIONER_KAFKA_SASL_PASSWORD="hunter2-sasl-secret",
        CAPTIONER_KAFKA_SSL_KEY_PASSWORD="hunter3-key-secret",
        CAPTIONER_API_KEY="hunter4-client-key",
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
        "client",
        "schema_registry",
    }
    assert shown["client"]["CAPTIONER_API_KEY"] == "**********"
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


@pytest.mark.parametrize(
    ("keys_file", "named"),
    [
        pytest.param(
            "# the operators' keys\n\n   \n", "CAPTIONER_API_KEYS_FILE: no API key", id="comments-only"
        ),
        pytest.param(f"{'k' * 40}\nshort-secret-key\n", "CAPTIONER_API_KEYS_FILE, line 2:", id="short-key"),
    ],
)
def test_an_api_whose_keys_file_holds_no_usable_key_does_not_start(
    tmp_path: Path, keys_file: str, named: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(keys_file)

    done = captioner("api", CAPTIONER_API_KEYS_FILE=str(path), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"captioner: invalid setting: {named}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "short-secret-key" not in done.stderr


def test_an_api_that_requires_keys_does_not_start_without_one() -> None:
    done = captioner("api", CAPTIONER_API_AUTH="required", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("captioner: invalid setting: CAPTIONER_API_AUTH=required"), done.stderr


@pytest.mark.parametrize(
    ("env", "keys"),
    [
        pytest.param({}, 0, id="nothing-configured"),  # auth off, as `make run` runs the API
        pytest.param({"CAPTIONER_API_AUTH": "off"}, 0, id="off"),
        pytest.param(
            {"CAPTIONER_API_AUTH": "required", "CAPTIONER_API_KEYS": f" {'k' * 32} ,{'j' * 40}, "}, 2
        ),
    ],
)
def test_keys_settings_that_hold_together_load(env: dict[str, str], keys: int) -> None:
    done = captioner("config", **env)

    assert done.returncode == 0, done.stderr
    api = json.loads(done.stdout)["api"]
    assert api["CAPTIONER_API_AUTH"] == env.get("CAPTIONER_API_AUTH", "auto")
    assert api["CAPTIONER_API_KEYS"] == ("**********" if keys else None)


def test_topics_acls_dry_run_lists_each_roles_acls_for_the_configured_names() -> None:
    done = captioner(
        "topics",
        "acls",
        "--api=User:api",
        "--worker=User:worker",
        "--publisher=User:partner=partner.replies",
        "--dry-run",
        CAPTIONER_TOPIC_REQUESTS="jobs",
        CAPTIONER_WORKER_GROUP_ID="team-workers",
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # a dry run asks the cluster nothing
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "ALLOW User:api WRITE topic jobs  (api: publishes jobs)" in lines
    assert "ALLOW User:worker READ group team-workers.retries  (worker: the retry tiers' group)" in lines
    assert "ALLOW User:worker WRITE topic partner.replies  (worker: answers an outside publisher)" in lines
    assert "ALLOW User:partner READ topic partner.replies  (publisher: reads its replies)" in lines
    assert not any("User:operator" in line for line in lines)  # a role left out gets nothing


@pytest.mark.parametrize(
    "option", ["--api=api", "--worker=Group:workers", "--publisher=User:partner", "--operator=User:"]
)
def test_topics_acls_refuses_a_malformed_principal(option: str) -> None:
    done = captioner("topics", "acls", option, "--dry-run")

    assert done.returncode == 2
    assert done.stderr.startswith("captioner topics acls: ") and len(done.stderr.splitlines()) == 1


def test_topics_scram_user_takes_its_password_from_stdin_only() -> None:
    done = subprocess.run(
        [CAPTIONER, "topics", "scram-user", "api"], input="", capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    assert "give the password on stdin" in done.stderr
