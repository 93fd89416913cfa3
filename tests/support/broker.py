"""Which Kafka the tests use: KAFKA_BOOTSTRAP_SERVERS, else testcontainers (if Docker answers), else
the local KRaft broker from infra/kafka, started fresh for the session on its own port."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BROKER_SCRIPT = REPO / "infra" / "kafka" / "broker.sh"
# Outside the CAPTIONER_ prefix: the services the tests start inherit the environment, and refuse any
# CAPTIONER_* variable that is not a setting.
BASE_PORT = int(os.environ.get("TEST_KAFKA_PORT", "19092"))
# `make test` runs the suite in several pytest-xdist workers (PYTEST_XDIST_WORKER gw0, gw1, ...): each
# starts its own brokers and registry, 100 ports above the one before (the secured broker is +10, the
# registry +20, make chaos's cluster +1000).
WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
TEST_BROKER_PORT = BASE_PORT + 100 * WORKER_INDEX


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


# The broker that pytest-xdist's controller started for its workers (tests/conftest.py); not
# KAFKA_BOOTSTRAP_SERVERS, which would point the `make run` the tests drive at it.
SHARED_BOOTSTRAP_VARIABLE = "TEST_KAFKA_SHARED_BOOTSTRAP"


@contextmanager
def kafka_cluster() -> Iterator[str]:
    """Yields a bootstrap address for the whole test session."""
    if given := os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get(SHARED_BOOTSTRAP_VARIABLE):
        yield given
    elif docker_answers():
        yield from _testcontainers_kafka()
    else:
        yield from _local_broker()


def _testcontainers_kafka() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as container:
        yield container.get_bootstrap_server()


def _local_broker() -> Iterator[str]:
    prefix = f"captioner-test-broker-{TEST_BROKER_PORT}-"
    for left_behind in Path(tempfile.gettempdir()).glob(prefix + "*"):  # by an aborted run
        _stop(left_behind)
    state = Path(tempfile.mkdtemp(prefix=prefix))
    env = _broker_env(state)
    started = subprocess.run([str(BROKER_SCRIPT), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"local Kafka broker did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        _stop(state)


def _broker_env(state: Path) -> dict[str, str]:
    return os.environ | {
        "KAFKA_LOCAL_PORT": str(TEST_BROKER_PORT),
        "KAFKA_LOCAL_STATE": str(state),
        "KAFKA_LOCAL_SECURITY": "plaintext",  # the session's clients speak PLAINTEXT (secured_kafka.py: TLS)
    }


def _stop(state: Path) -> None:
    subprocess.run([str(BROKER_SCRIPT), "stop"], env=_broker_env(state), check=False)
    shutil.rmtree(state, ignore_errors=True)
