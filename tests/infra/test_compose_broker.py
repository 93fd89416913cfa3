"""The compose broker's security, run for real: infra/deploy/make-secrets.sh makes the secrets and
infra/deploy/kafka/start.sh configures and starts the broker exactly as the compose service does, on the
Kafka release the apache/kafka image holds (4.1.1, from the jars infra/kafka fetches), with only its
paths and ports moved. Each role's principal gets in over SASL_SSL (SCRAM-SHA-512) with the CA from the
secrets; anything else is refused."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from core.kafka_config import client_config
from core.settings import KafkaSettings, TopicSettings
from core.topics import ensure_topics
from tests.support.broker import BROKER_SCRIPT
from tests.support.repo import REPO
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPLOY = REPO / "infra" / "deploy"
LIBS = REPO / ".local" / "kafka" / "libs"
LOG4J = REPO / "infra" / "kafka" / "log4j2.properties"
# What the compose file gives each role: (principal, its password's secret).
ROLES = {"api": "captioner-api", "worker": "captioner-worker", "admin": "captioner-admin"}
REFUSED_WITHIN_S = 8


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    secrets: Path

    def password(self, role: str) -> str:
        return (self.secrets / f"kafka_{role}_password").read_text().strip()

    def settings(self, **overrides: object) -> KafkaSettings:
        """A client as compose configures our services (docker-compose.yml, x-kafka-client)."""
        fields: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": ROLES["api"],
            "sasl_password": self.password("api"),
            "ssl_ca_location": str(self.secrets / "kafka_ca"),
        }
        return KafkaSettings(**(fields | overrides))  # type: ignore[arg-type]


def java_tool(path: Path, main_class: str) -> Path:
    """Stands in for the image's /opt/kafka/bin script of the same role."""
    path.write_text(
        "#!/bin/sh\n"
        f"exec java -Xms128m -Xmx512m -Dlog4j2.configurationFile={LOG4J} -cp '{LIBS}/*' {main_class} \"$@\"\n"
    )
    path.chmod(0o755)
    return path


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    subprocess.run([str(BROKER_SCRIPT), "fetch"], check=True, capture_output=True, timeout=600)
    root = tmp_path_factory.mktemp("compose-broker")
    secrets = Path(
        subprocess.run(
            [str(DEPLOY / "make-secrets.sh"), str(root / "secrets"), "localhost"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()
    )
    port, controller_port = free_port(), free_port()
    environment = {
        "PATH": "/usr/bin:/bin",
        "BROKER_SECRETS": str(secrets),
        "BROKER_HOST": "localhost",
        "BROKER_PORT": str(port),
        "BROKER_CONTROLLER_PORT": str(controller_port),
        "BROKER_DATA": str(root / "data"),
        "BROKER_CONFIG": str(root / "config"),
        "BROKER_STORAGE_TOOL": str(java_tool(root / "kafka-storage", "kafka.tools.StorageTool")),
        "BROKER_SERVER": str(java_tool(root / "kafka-server-start", "kafka.Kafka")),
    }
    log = root / "broker.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["sh", str(DEPLOY / "kafka" / "start.sh")],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: port_open(port) or process.poll() is not None,
            timeout_s=180,
            message=lambda: log.read_text()[-2000:],
        )
        assert process.poll() is None, log.read_text()[-4000:]
        yield Broker(f"localhost:{port}", secrets)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def topics_seen(settings: KafkaSettings) -> set[str]:
    """The topics the broker lists to these settings' client; KafkaException once the client reports an
    error (a refused login or handshake), which it does long before list_topics would give up."""
    errors: list[KafkaError] = []
    admin = AdminClient(
        client_config(settings, client_id="compose-broker-test") | {"log_level": 0, "error_cb": errors.append}
    )
    give_up = time.monotonic() + REFUSED_WITHIN_S
    while True:
        try:
            return set(admin.list_topics(timeout=0.5).topics)
        except KafkaException:
            admin.poll(0)  # serves error_cb
            if errors:
                raise KafkaException(errors[0]) from None
            if time.monotonic() > give_up:
                raise


def test_each_role_gets_in_with_its_own_principal_and_the_admin_creates_the_topics(broker: Broker) -> None:
    topics = TopicSettings()
    admin = broker.settings(sasl_username=ROLES["admin"], sasl_password=broker.password("admin"))

    ensure_topics(admin, topics)

    for role, principal in ROLES.items():
        seen = topics_seen(broker.settings(sasl_username=principal, sasl_password=broker.password(role)))
        assert topics.requests in seen, role


@pytest.mark.parametrize(
    "client",
    [
        pytest.param({"sasl_password": "not-the-password"}, id="wrong-password"),
        pytest.param({"sasl_username": ROLES["worker"]}, id="another-roles-password"),
        pytest.param({"security_protocol": "SSL"}, id="tls-without-sasl"),
        pytest.param({"security_protocol": "PLAINTEXT"}, id="plaintext"),
        pytest.param({"sasl_mechanism": "SCRAM-SHA-256"}, id="another-mechanism"),
        pytest.param({"ssl_ca_location": None}, id="broker-not-trusted-by-the-system-store"),
    ],
)
def test_anything_else_is_refused(broker: Broker, client: dict[str, object]) -> None:
    with pytest.raises(KafkaException):
        topics_seen(broker.settings(**client))
