"""The three-node cluster of a chaos run: infra/kafka/cluster.sh for its processes, an admin client for what
it says about itself (who leads what, whether every replica is back in sync, where the worker group
stands)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.models import REPO
from captioner.dlq.records import header_pairs
from core.kafka_config import client_config
from core.settings import KafkaSettings, load_settings
from schemas import headers as record_headers

CLUSTER_SH = REPO / "infra" / "kafka" / "cluster.sh"
NODES = (1, 2, 3)
_OFFSETS_TOPIC = "__consumer_offsets"


class KafkaCluster:
    """Runs cluster.sh with this run's ports and state directory."""

    def __init__(self, *, base_port: int, state: Path) -> None:
        self._env = {
            **os.environ,
            "KAFKA_CLUSTER_BASE_PORT": str(base_port),
            "KAFKA_CLUSTER_STATE": str(state),
            "KAFKA_LOCAL_SECURITY": "plaintext",  # the harness's clients speak PLAINTEXT
        }
        self.bootstrap = ""

    def _run(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLUSTER_SH), *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def _checked(self, *args: str, timeout_s: float = 180) -> str:
        result = self._run(*args, timeout_s=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self, node: int | None = None) -> None:
        out = self._checked("start", *([str(node)] if node else []))
        self.bootstrap = out.strip().splitlines()[-1]

    def stop(self) -> None:
        self._run("stop")

    def kill(self, node: int) -> None:
        self._checked("kill", str(node))

    def restart(self, node: int) -> None:
        self._checked("restart", str(node))

    def partition(self, node: int) -> None:
        self._checked("partition", str(node))

    def heal(self, node: int) -> None:
        self._checked("heal", str(node))

    def partition_unavailable(self) -> str | None:
        """Why this machine cannot cut a node off the network, or None when it can."""
        result = self._run("can-partition", timeout_s=30)
        return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class ClusterView:
    """What the cluster reports, through the project's own client settings."""

    def __init__(self, bootstrap: str) -> None:
        self._config = client_config(load_settings(KafkaSettings), client_id="chaos-observer") | {
            "bootstrap.servers": bootstrap
        }
        self._admin = AdminClient(self._config | {"logger": _quiet_logger()})

    def partitions(self, topics: Iterable[str]) -> list[PartitionState]:
        metadata = self._admin.list_topics(timeout=10)
        states = []
        for name in topics:
            topic = metadata.topics.get(name)
            if topic is None:
                continue
            for part in topic.partitions.values():
                states.append(
                    PartitionState(name, part.id, part.leader, tuple(part.replicas), tuple(part.isrs))
                )
        return states

    def leader_of_most(self, topic: str) -> int:
        leaders = Counter(state.leader for state in self.partitions([topic]) if state.leader >= 0)
        return leaders.most_common(1)[0][0]

    def leader_of(self, topic: str, partition: int) -> int:
        [state] = [state for state in self.partitions([topic]) if state.partition == partition]
        return state.leader

    def wait_healthy(self, topics: Sequence[str], *, timeout_s: float) -> float:
        """Waits until every node is back, every replica in sync and every leader the preferred one (Kafka
        moves leaderships back every 10 s on the chaos cluster); returns the seconds it took, or raises."""
        started = time.monotonic()
        while unhealthy := self._unhealthy(topics):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the cluster did not heal within {timeout_s:g} s: {unhealthy[:5]}")
            time.sleep(0.5)
        return time.monotonic() - started

    def _unhealthy(self, topics: Sequence[str]) -> list[str]:
        try:
            states = self.partitions([*topics, _OFFSETS_TOPIC])  # the group's offsets, once it has any
        except Exception as exc:
            return [f"no metadata: {exc}"]
        missing = set(topics) - {state.topic for state in states}
        return [f"{name}: missing" for name in sorted(missing)] + [
            f"{state.topic}[{state.partition}] leader {state.leader} isr {state.isr} of {state.replicas}"
            for state in states
            if len(state.isr) != len(NODES) or state.leader != state.replicas[0]
        ]

    def group_members(self, group: str) -> int:
        """Members of the consumer group that hold partitions."""
        try:
            [future] = self._admin.describe_consumer_groups([group], request_timeout=10).values()
            description = future.result()
        except Exception:
            return 0
        return sum(1 for member in description.members if member.assignment.topic_partitions)

    def request_partitions_by_member(self, group: str, topic: str) -> dict[str, int]:
        """Client id -> how many of topic's partitions that member of the group holds."""
        [future] = self._admin.describe_consumer_groups([group], request_timeout=10).values()
        return {
            member.client_id: sum(1 for tp in member.assignment.topic_partitions if tp.topic == topic)
            for member in future.result().members
        }

    def wait_group(self, group: str, *, members: int, timeout_s: float) -> None:
        give_up = time.monotonic() + timeout_s
        while self.group_members(group) < members:
            if time.monotonic() > give_up:
                raise TimeoutError(
                    f"consumer group {group} did not have {members} members in {timeout_s:g} s"
                )
            time.sleep(0.5)

    def unfinished_jobs(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], range]:
        """Per partition, the offsets between the group's committed position and the end of the log."""
        ends = self._end_offsets(topics)
        if not ends:
            return {}
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in ends])
        [future] = self._admin.list_consumer_group_offsets([request], request_timeout=10).values()
        committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in future.result().topic_partitions}
        return {
            key: range(committed.get(key, 0), end) for key, end in ends.items() if committed.get(key, 0) < end
        }

    def dead_lettered(self, dead_letter_topic: str) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of every job the dead-letter topic holds, from its headers."""
        ends = self._end_offsets([dead_letter_topic])
        consumer = Consumer(self._config | {"group.id": "chaos-observer", "logger": _quiet_logger()})
        found: set[tuple[str, int, int]] = set()
        try:
            consumer.assign([TopicPartition(t, p, 0) for (t, p), end in ends.items() if end > 0])
            remaining = sum(ends.values())
            give_up = time.monotonic() + 30
            while remaining > 0 and time.monotonic() < give_up:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                remaining -= 1
                found.add(_original_position(message))
        finally:
            consumer.close()
        return found

    def _end_offsets(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        consumer = Consumer(self._config | {"group.id": "chaos-observer", "logger": _quiet_logger()})
        try:
            return {
                (state.topic, state.partition): consumer.get_watermark_offsets(
                    TopicPartition(state.topic, state.partition), timeout=10
                )[1]
                for state in self.partitions(topics)
            }
        finally:
            consumer.close()


def _original_position(message: Message) -> tuple[str, int, int]:
    headers = {name: value.decode() for name, value in header_pairs(message.headers())}
    return (
        headers[record_headers.ORIGINAL_TOPIC],
        int(headers[record_headers.ORIGINAL_PARTITION]),
        int(headers[record_headers.ORIGINAL_OFFSET]),
    )


def _quiet_logger() -> logging.Logger:
    """librdkafka logs every refused connection to a killed node; the run expects those."""
    logger = logging.getLogger("chaos.librdkafka")
    logger.setLevel(logging.CRITICAL)
    return logger
