"""A local KRaft broker that enforces what production should: TLS with a throwaway CA, SASL/SCRAM-SHA-512
and an authorizer that allows only what an ACL allows (`KAFKA_LOCAL_SECURITY=sasl_ssl infra/kafka/broker.sh`).
It listens on the tests' broker port + 10 (and + 11 for its controller), so that it never meets the
session's plain broker, and starts only for the tests that ask for it."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from captioner.acls import set_scram_passwords
from core.kafka_config import client_config
from core.settings import KafkaSettings
from tests.support.broker import BROKER_SCRIPT, TEST_BROKER_PORT

SECURED_BROKER_PORT = TEST_BROKER_PORT + 10
ADMIN = "admin"
SCRAM = "SCRAM-SHA-512"
# One user per role, two outside publishers, and one with no ACL at all.
API, WORKER, OPERATOR, PARTNER, OTHER_TEAM, INTRUDER = (
    "api",
    "worker",
    "operator",
    "partner",
    "other-team",
    "intruder",
)
SECURED_USERS = (API, WORKER, OPERATOR, PARTNER, OTHER_TEAM, INTRUDER)


@dataclass(frozen=True)
class SecuredKafka:
    bootstrap: str
    ca_location: Path
    passwords: dict[str, str] = field(repr=False)  # user -> password, the super user's included

    def connection_env(self) -> dict[str, str]:
        """What every client of this broker sets, whoever it is: the address, TLS and SASL, no user."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CAPTIONER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CAPTIONER_KAFKA_SASL_MECHANISM": SCRAM,
            "CAPTIONER_KAFKA_SSL_CA_LOCATION": str(self.ca_location),
        }

    def credentials(self, user: str) -> dict[str, str]:
        return {
            "CAPTIONER_KAFKA_SASL_USERNAME": user,
            "CAPTIONER_KAFKA_SASL_PASSWORD": self.passwords[user],
        }

    def settings(self, user: str, *, password: str | None = None) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM,
            sasl_username=user,
            sasl_password=SecretStr(self.passwords[user] if password is None else password),
            ssl_ca_location=str(self.ca_location),
        )

    def client_config(self, user: str, *, password: str | None = None) -> dict[str, Any]:
        """librdkafka settings of `user`, as the project's clients make them."""
        return client_config(self.settings(user, password=password), client_id=f"test-{user}")

    def add_users(self, *users: str) -> None:
        """SCRAM users with random passwords, made by the super user."""
        made = {user: secrets.token_hex(16) for user in users}
        set_scram_passwords(self.settings(ADMIN), made)
        self.passwords.update(made)


@contextmanager
def secured_broker(*, port: int = SECURED_BROKER_PORT) -> Iterator[SecuredKafka]:
    prefix = f"captioner-test-secured-broker-{port}-"
    for left_behind in Path(tempfile.gettempdir()).glob(prefix + "*"):  # by an aborted run
        _stop(left_behind, port)
    state = Path(tempfile.mkdtemp(prefix=prefix))
    started = subprocess.run(
        [str(BROKER_SCRIPT), "start"], env=_broker_env(state, port), capture_output=True, text=True
    )
    try:
        if started.returncode != 0:
            raise RuntimeError(f"secured Kafka broker did not start:\n{started.stdout}\n{started.stderr}")
        admin = _read_env(state / "admin.env")
        yield SecuredKafka(
            bootstrap=started.stdout.strip().splitlines()[-1],
            ca_location=Path(admin["CAPTIONER_KAFKA_SSL_CA_LOCATION"]),
            passwords={ADMIN: admin["CAPTIONER_KAFKA_SASL_PASSWORD"]},
        )
    finally:
        _stop(state, port)


def _read_env(path: Path) -> dict[str, str]:
    """broker.sh's admin.env: NAME=value lines, values shell-quoted."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: shlex.split(value)[0] for name, value in pairs}


def _broker_env(state: Path, port: int) -> Mapping[str, str]:
    return os.environ | {
        "KAFKA_LOCAL_PORT": str(port),
        "KAFKA_LOCAL_STATE": str(state),
        "KAFKA_LOCAL_SECURITY": "sasl_ssl",
    }


def _stop(state: Path, port: int) -> None:
    subprocess.run([str(BROKER_SCRIPT), "stop"], env=_broker_env(state, port), check=False)
    shutil.rmtree(state, ignore_errors=True)
