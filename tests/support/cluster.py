"""A two-broker KRaft cluster of the tests' own, for failures one broker cannot show: node 1 is the
controller and a broker (started by infra/kafka/broker.sh, as `make run` does), node 2 a broker alone
that joins it and can be stopped (and started again), leaving the partitions that live only on it without a
leader meanwhile, while everything on node 1 goes on."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.support.broker import BROKER_SCRIPT, REPO
from tests.support.services import free_port
from tests.support.waiting import wait_until

LIBS = REPO / ".local" / "kafka" / "libs"
LOG4J = REPO / "infra" / "kafka" / "log4j2.properties"
NODE_1_CONFIG = REPO / "infra" / "kafka" / "server.properties"
# Settings every broker of a cluster must agree on: a transaction coordinator that counted the group offsets
# topic's partitions otherwise than the group's coordinator adds another partition to a transaction than the
# one its offsets are written to, and the group coordinator refuses them (INVALID_TXN_STATE).
SHARED_SETTINGS = ("offsets.topic.num.partitions", "group.initial.rebalance.delay.ms")
JAVA_OPTS = ["-Xms128m", "-Xmx384m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    return f"{home}/bin/java" if home else "java"


def _java_args(*args: str) -> list[str]:
    return [_java(), *JAVA_OPTS, f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{LIBS}/*", *args]


def _shared_settings() -> list[str]:
    """Node 1's values of SHARED_SETTINGS."""
    lines = NODE_1_CONFIG.read_text().splitlines()
    return [line for line in lines if line.split("=", 1)[0] in SHARED_SETTINGS]


@dataclass
class SecondBroker:
    """Node 2: a broker only, registered with node 1's controller."""

    directory: Path
    port: int
    controller_port: int
    cluster_id: str
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        path = self.directory / "server.properties"
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker",
                    "node.id=2",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    "controller.listener.names=CONTROLLER",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.directory / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "auto.create.topics.enable=false",
                    *_shared_settings(),
                ]
            )
            + "\n"
        )
        return path

    def start(self) -> None:
        config = self.config()
        log = self.directory / "broker.log"
        with log.open("ab") as out:
            format_storage = ["format", "-t", self.cluster_id, "-c", str(config)]
            subprocess.run(
                # A restart finds its storage formatted already.
                _java_args("kafka.tools.StorageTool", *format_storage, "--ignore-formatted"),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
            self.process = subprocess.Popen(
                _java_args("kafka.Kafka", str(config)), stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class TwoBrokers:
    bootstrap: str  # node 1: the clients learn node 2 from the metadata
    second: SecondBroker
    first_env: dict[str, str]  # broker.sh's environment for node 1

    def stop_first(self) -> None:
        subprocess.run([str(BROKER_SCRIPT), "stop"], env=self.first_env, check=True, capture_output=True)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def brokers(self) -> set[int]:
        return set(self.admin().list_topics(timeout=10).brokers)

    def start_second(self, *, timeout_s: float = 120) -> None:
        self.second.start()
        wait_until(
            lambda: 2 in self.brokers(),
            timeout_s=timeout_s,
            message=lambda: (
                "node 2 did not join:\n" + (self.second.directory / "broker.log").read_text()[-3000:]
            ),
        )

    def leaders(self, topic: str) -> list[int]:
        """Each partition's leader, -1 for none."""
        described = self.admin().list_topics(topic, timeout=10).topics[topic]
        return [partition.leader for _, partition in sorted(described.partitions.items())]


@contextmanager
def two_brokers(directory: Path) -> Iterator[TwoBrokers]:
    """Node 1 up; node 2 is started by `start_second`, once what must stay on node 1 exists."""
    port, controller_port = free_port(), free_port()
    first_state = directory / "node-1"
    env = os.environ | {
        "KAFKA_LOCAL_PORT": str(port),
        "KAFKA_LOCAL_CONTROLLER_PORT": str(controller_port),
        "KAFKA_LOCAL_STATE": str(first_state),
    }
    started = subprocess.run([str(BROKER_SCRIPT), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"node 1 did not start:\n{started.stdout}\n{started.stderr}")
    (directory / "node-2").mkdir(parents=True)
    meta = (first_state / "data" / "meta.properties").read_text()
    cluster_id = next(line.split("=", 1)[1] for line in meta.splitlines() if line.startswith("cluster.id="))
    second = SecondBroker(directory / "node-2", free_port(), controller_port, cluster_id)
    cluster = TwoBrokers(bootstrap=started.stdout.strip().splitlines()[-1], second=second, first_env=env)
    try:
        yield cluster
    finally:
        second.stop()
        subprocess.run([str(BROKER_SCRIPT), "stop"], env=env, check=False, capture_output=True)
