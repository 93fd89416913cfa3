"""The service on a broker that enforces TLS, SASL/SCRAM and ACLs (tests/support/secured_kafka.py), each
principal holding exactly the ACLs `captioner topics acls` gives its role: the API and the worker start
and serve without any right to create topics, the operator's tools work, an outside publisher gets its
replies and nothing else, and whoever holds no ACL, the wrong password or no TLS gets the broker's
refusal."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from captioner.acls import Principals, Publisher, WorkerGroups, grants
from core.kafka_config import API_CLIENT_PREFIX, producer_config
from core.settings import TopicSettings
from core.topics import TopicSpec, create_topics
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionReply, CaptionRequest, ReplyStatus
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.secured_kafka import (
    ADMIN,
    API,
    INTRUDER,
    OPERATOR,
    OTHER_TEAM,
    PARTNER,
    WORKER,
    SecuredKafka,
)
from tests.support.services import CAPTIONER, service_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REFUSED = "TOPIC_AUTHORIZATION_FAILED"
ALLOWED = "allowed"


@pytest.fixture
def env(
    secured_kafka: SecuredKafka,
    topic_env: dict[str, str],
    tiny_model_dir: Path,
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> dict[str, str]:
    """This module's services reach the secured broker; each adds its own user's credentials. The cache is
    on with a key pair: the API reads the cache topic, the worker writes it."""
    workers_cache, apis_cache = cache_env
    return {
        **workers_cache,
        **apis_cache,
        **topic_env,
        **secured_kafka.connection_env(),
        "CAPTIONER_MODEL": str(tiny_model_dir),
        "CAPTIONER_WORKER_THREADS": "1",
        "CAPTIONER_API_REQUEST_TIMEOUT_S": "30",
        "CAPTIONER_LOG_LEVEL": "INFO",
    }


@dataclass(frozen=True)
class Deployment:
    kafka: SecuredKafka
    env: dict[str, str]
    topics: TopicSettings
    partner_replies: str
    other_team_replies: str

    def as_user(self, user: str) -> dict[str, str]:
        return {**self.env, **self.kafka.credentials(user)}

    def captioner(self, user: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CAPTIONER, *args],
            env=service_env(self.as_user(user)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def create_topics_as_operator(self) -> None:
        created = self.captioner(OPERATOR, "topics", "create")
        assert created.returncode == 0, created.stderr
        assert self.topics.requests in created.stdout

    def create_publisher_topics(self) -> None:
        """Outside publishers' reply topics are the cluster administrator's to create."""
        specs = [TopicSpec(name, 1, retention_ms=3_600_000) for name in self.publisher_topics]
        create_topics(self.kafka.settings(ADMIN), specs, self.topics.max_message_bytes)

    @property
    def publisher_topics(self) -> list[str]:
        return [self.partner_replies, self.other_team_replies]

    def dead_letters(self) -> dict[str, Any]:
        listed = self.captioner(OPERATOR, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return dict(json.loads(listed.stdout))


@pytest.fixture
def deployment(
    secured_kafka: SecuredKafka, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Deployment:
    """The ACLs of every role for this test's topics, applied by the super user with the operator
    command; no topic exists yet."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    prefix = env["CAPTIONER_TOPIC_REPLIES"].removesuffix(".replies")
    found = Deployment(
        kafka=secured_kafka,
        env=env,
        topics=TopicSettings(),
        partner_replies=f"{prefix}.partner.replies",
        other_team_replies=f"{prefix}.other-team.replies",
    )
    applied = found.captioner(
        ADMIN,
        "topics",
        "acls",
        f"--api=User:{API}",
        f"--worker=User:{WORKER}",
        f"--operator=User:{OPERATOR}",
        f"--publisher=User:{PARTNER}={found.partner_replies}",
        f"--publisher=User:{OTHER_TEAM}={found.other_team_replies}",
    )
    assert applied.returncode == 0, applied.stderr
    return found


def worker_groups(env: dict[str, str]) -> WorkerGroups:
    group = env["CAPTIONER_WORKER_GROUP_ID"]
    return WorkerGroups(requests=group, retries=f"{group}.retries")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


def caption_request(image: bytes, *, reply_topic: str, correlation_id: str | None = None) -> CaptionRequest:
    now = datetime.now(UTC)
    return CaptionRequest(
        correlation_id=correlation_id or uuid.uuid4().hex,
        image=image,
        content_type="image/png",
        reply_topic=reply_topic,
        deadline=now + timedelta(seconds=90),
        created_at=now,
    )


def publish(config: dict[str, Any], topic: str, request: CaptionRequest) -> None:
    producer = Producer(config)
    producer.produce(topic, key=request.correlation_id.encode(), value=REQUEST_CODEC.encode(request))
    assert producer.flush(30) == 0, "the job was not delivered"


def await_reply(consumer: Consumer, correlation_id: str, *, timeout_s: float = 90) -> CaptionReply:
    found: list[CaptionReply] = []
    errors: list[KafkaError] = []

    def arrived() -> bool:
        message = consumer.poll(0.2)
        if message is None:
            return False
        if message.error():
            errors.append(message.error())
            return False
        reply = REPLY_CODEC.decode(message.value() or b"")
        if reply.correlation_id == correlation_id and reply.status is not ReplyStatus.RETRYING:
            found.append(reply)
        return bool(found)

    wait_until(arrived, timeout_s=timeout_s, message=lambda: f"no reply; consumer errors: {errors[-3:]}")
    return found[0]


# -- what a principal may do, as the broker answers it -------------------------------------------------


def write_outcome(config: dict[str, Any], topic: str) -> str:
    """ALLOWED once the broker acknowledges a record, else the name of its refusal."""
    reports: list[KafkaError | None] = []
    producer = Producer(config | {"message.timeout.ms": 30_000})
    # keyed: the compacted cache topic takes no record without a key
    producer.produce(
        topic, key=b"probe", value=b"written by a test", on_delivery=lambda e, _m: reports.append(e)
    )
    producer.flush(40)
    assert reports, f"no delivery report for {topic}"
    return ALLOWED if reports[0] is None else str(reports[0].name())


def read_outcome(config: dict[str, Any], topic: str, *, group: str) -> str:
    """ALLOWED once partition 0 of `topic` gives a record or its end, else the broker's refusal: of the
    topic's metadata to a principal that may not even describe it, else of the fetch. The group is one the
    principal may use where it has one; an assign()ed consumer fetches without its coordinator anyway."""
    consumer = Consumer(
        config | {"group.id": group, "enable.auto.commit": False, "enable.partition.eof": True}
    )
    try:
        described = consumer.list_topics(topic, timeout=30).topics[topic]
        if described.error is not None:
            return str(described.error.name())
        consumer.assign([TopicPartition(topic, 0, 0)])
        return _fetch_outcome(consumer, topic)
    finally:
        consumer.close()


def _fetch_outcome(consumer: Consumer, topic: str) -> str:
    outcome: list[str] = []
    other_errors: list[KafkaError] = []

    def answered() -> bool:
        message = consumer.poll(0.2)
        if message is None:
            return False
        error = message.error()
        if error is None or error.code() == KafkaError._PARTITION_EOF:
            outcome.append(ALLOWED)
        elif error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            outcome.append(str(error.name()))
        else:
            other_errors.append(error)  # the intruder's group refusal, say: the fetch's answer follows
        return bool(outcome)

    wait_until(answered, timeout_s=60, message=lambda: f"{topic}: no answer; errors {other_errors[-3:]}")
    return outcome[0]


def join_outcome(config: dict[str, Any], topic: str, *, group: str) -> str:
    """ALLOWED once a subscription in `group` is assigned partitions, else the group's refusal."""
    consumer = Consumer(config | {"group.id": group, "enable.auto.commit": False})
    outcome: list[str] = []
    consumer.subscribe([topic], on_assign=lambda _c, _p: outcome.append(ALLOWED))

    def answered() -> bool:
        message = consumer.poll(0.2)
        error = message.error() if message is not None else None
        if error is not None and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            outcome.append(str(error.name()))
        return bool(outcome)

    try:
        wait_until(answered, timeout_s=60, message=f"{group}: neither assigned nor refused")
    finally:
        consumer.close()
    return outcome[0]


def test_each_principal_may_do_what_its_acls_say_and_nothing_else(deployment: Deployment) -> None:
    """The ACL matrix as the broker enforces it. No record written here matters: no service runs."""
    deployment.create_topics_as_operator()
    deployment.create_publisher_topics()
    topics, kafka = deployment.topics, deployment.kafka
    partner, other_team = deployment.partner_replies, deployment.other_team_replies
    groups = worker_groups(deployment.env)
    service = {
        "requests": topics.requests,
        "replies": topics.replies,
        "captions": topics.captions,
        "retry.1": topics.retry_topic(1),
        "dlq": topics.dead_letter,
        "partner.replies": partner,
        "other-team.replies": other_team,
    }
    # A group each principal may name, so that only the topic's ACL decides a read.
    read_group = {
        API: f"{API_CLIENT_PREFIX}matrix",
        WORKER: groups.requests,
        OPERATOR: "captioner-dlq-reader",
        PARTNER: f"{partner}.matrix",
        INTRUDER: "intruder",
    }
    expected = {
        # the intruder: authenticated, no ACL
        (INTRUDER, "write", "replies"): REFUSED,
        (INTRUDER, "write", "captions"): REFUSED,
        (INTRUDER, "write", "retry.1"): REFUSED,
        (INTRUDER, "write", "dlq"): REFUSED,
        (INTRUDER, "write", "requests"): REFUSED,
        (INTRUDER, "read", "requests"): REFUSED,
        (INTRUDER, "read", "replies"): REFUSED,
        (INTRUDER, "join", "workers' group"): "GROUP_AUTHORIZATION_FAILED",
        # the API publishes and reads; it can forge no answer and take no job
        (API, "write", "requests"): ALLOWED,
        (API, "read", "replies"): ALLOWED,
        (API, "read", "captions"): ALLOWED,
        (API, "write", "replies"): REFUSED,
        (API, "write", "captions"): REFUSED,
        (API, "write", "retry.1"): REFUSED,
        (API, "write", "dlq"): REFUSED,
        (API, "read", "requests"): REFUSED,
        (API, "join", "workers' group"): "GROUP_AUTHORIZATION_FAILED",
        # the worker writes every outcome; it reads no reply and no dead letter
        (WORKER, "write", "replies"): ALLOWED,
        (WORKER, "write", "captions"): ALLOWED,
        (WORKER, "write", "retry.1"): ALLOWED,
        (WORKER, "write", "dlq"): ALLOWED,
        (WORKER, "write", "partner.replies"): ALLOWED,
        (WORKER, "read", "requests"): ALLOWED,
        (WORKER, "read", "replies"): REFUSED,
        (WORKER, "read", "dlq"): REFUSED,
        # the operator reads dead letters and replays them; it writes no answer
        (OPERATOR, "read", "dlq"): ALLOWED,
        (OPERATOR, "write", "requests"): ALLOWED,
        (OPERATOR, "write", "retry.1"): ALLOWED,
        (OPERATOR, "write", "replies"): REFUSED,
        (OPERATOR, "write", "captions"): REFUSED,
        (OPERATOR, "read", "replies"): REFUSED,
        # an outside publisher: the request topic and its own replies, nothing else
        (PARTNER, "write", "requests"): ALLOWED,
        (PARTNER, "read", "partner.replies"): ALLOWED,
        (PARTNER, "read", "replies"): REFUSED,
        (PARTNER, "read", "other-team.replies"): REFUSED,
        (PARTNER, "read", "requests"): REFUSED,
        (PARTNER, "read", "captions"): REFUSED,
        (PARTNER, "write", "replies"): REFUSED,
        (PARTNER, "write", "partner.replies"): REFUSED,
        (PARTNER, "write", "other-team.replies"): REFUSED,
        (PARTNER, "write", "captions"): REFUSED,
        (PARTNER, "write", "retry.1"): REFUSED,
        (PARTNER, "write", "dlq"): REFUSED,
    }

    def outcome(user: str, action: str, resource: str) -> str:
        config = kafka.client_config(user)
        if action == "write":
            return write_outcome(config, service[resource])
        if action == "read":
            return read_outcome(config, service[resource], group=read_group[user])
        return join_outcome(config, topics.requests, group=groups.requests)

    seen = {row: outcome(*row) for row in expected}

    assert seen == expected


def test_the_acls_on_the_broker_are_the_ones_the_code_gives(deployment: Deployment) -> None:
    principals = Principals(
        api=f"User:{API}",
        worker=f"User:{WORKER}",
        operator=f"User:{OPERATOR}",
        publishers=(
            Publisher(f"User:{PARTNER}", deployment.partner_replies),
            Publisher(f"User:{OTHER_TEAM}", deployment.other_team_replies),
        ),
    )
    given = grants(principals, deployment.topics, worker_groups(deployment.env))
    wanted = {grant.binding() for grant in given}
    admin = AdminClient(deployment.kafka.client_config(ADMIN))
    every_acl = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    on_broker = admin.describe_acls(every_acl, request_timeout=30).result(timeout=30)

    assert wanted <= set(on_broker)
    assert {binding.permission_type for binding in on_broker} == {AclPermissionType.ALLOW}


def test_only_a_super_user_grants_acls_or_sets_passwords(deployment: Deployment) -> None:
    """The operator runs the service's tools; it cannot give the intruder the worker's rights."""
    escalated = deployment.captioner(OPERATOR, "topics", "acls", f"--worker=User:{INTRUDER}")
    password = subprocess.run(
        [CAPTIONER, "topics", "scram-user", WORKER],
        input="taken-over\n",
        env=service_env(deployment.as_user(OPERATOR)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert escalated.returncode == 1
    assert last_line(escalated.stderr).startswith("captioner topics acls: ACL refused: ")
    assert password.returncode == 1, password.stderr
    assert "SCRAM credential refused" in password.stderr
    AdminClient(deployment.kafka.client_config(WORKER)).list_topics(timeout=30)  # its password still works


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_api_and_worker_start_without_create_and_the_operator_replays_a_dead_letter(
    deployment: Deployment,
    start_worker: StartWorker,
    start_api: StartApi,
    tiny_model_dir: Path,
    guarantee: str,
) -> None:
    """Neither the API nor the worker may create a topic: the operator creates them first. Exactly once,
    the worker's transactions (its transactional id, the offsets it sends) are within its ACLs too."""
    deployment.create_topics_as_operator()
    worker = start_worker(**deployment.kafka.credentials(WORKER), CAPTIONER_DELIVERY_GUARANTEE=guarantee)
    api = start_api(**deployment.kafka.credentials(API))
    image = make_image_bytes("PNG", seed=17)

    answered = requests.post(
        f"{api.url}/api/v1/predictions", json={"image": base64.b64encode(image).decode()}, timeout=60
    )
    # a record no worker can read, from a publisher: a dead letter at once
    poison = Producer(deployment.kafka.client_config(PARTNER))
    poison.produce(deployment.topics.requests, key=b"poison", value=b"not a CaptionRequest")
    assert poison.flush(30) == 0

    assert answered.status_code == 200, answered.text
    assert answered.json()["title"] == reference_captioner(tiny_model_dir).caption(image)
    wait_until(
        lambda: deployment.dead_letters()["total"] == 1,
        timeout_s=60,
        interval_s=1,
        message="no dead letter listed",
    )
    replayed = deployment.captioner(OPERATOR, "dlq", "replay", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["counts"]["replayed"] == 1
    # the replayed job fails again in the worker, and is dead-lettered again
    wait_until(
        lambda: deployment.dead_letters()["total"] == 2,
        timeout_s=60,
        interval_s=1,
        message="the replay never ran",
    )
    # its progress was committed: a second run reads only the new dead letter
    again = deployment.captioner(OPERATOR, "dlq", "replay", "--dry-run", "--json")
    assert again.returncode == 0, again.stderr
    counts = json.loads(again.stdout)["counts"]
    assert (counts["scanned"], counts["would_replay"]) == (1, 1)
    for process in (worker, api):
        assert "AUTHORIZATION_FAILED" not in process.log(), process.log_tail()


def test_without_their_topics_api_and_worker_stop_with_one_line(deployment: Deployment) -> None:
    """No topic exists and neither principal may create one: each names what is missing and who creates
    it, and exits 3. The intruder may not even learn whether the topics exist."""
    worker = deployment.captioner(WORKER, "worker")
    api = deployment.captioner(API, "api")
    intruder = deployment.captioner(INTRUDER, "topics", "create")

    topics = deployment.topics
    assert (worker.returncode, api.returncode, intruder.returncode) == (3, 3, 3), worker.stderr + api.stderr
    assert last_line(worker.stderr) == (
        f"captioner worker: topics {', '.join(sorted(spec for spec in all_topics(topics)))} do not exist and "
        f"User:{WORKER} may not create them: run `captioner topics create` as the operator"
    )
    assert last_line(api.stderr) == (
        f"captioner api: topics {', '.join(sorted([topics.requests, topics.replies, topics.captions]))} "
        f"do not exist and User:{API} may not create them: run `captioner topics create` as the operator"
    )
    assert last_line(intruder.stderr).startswith(f"captioner topics create: User:{INTRUDER} may not describe")
    assert "Traceback" not in worker.stderr + api.stderr + intruder.stderr


def all_topics(topics: TopicSettings) -> list[str]:
    return [topics.requests, topics.replies, *topics.retry_topics, topics.dead_letter, topics.captions]


def test_an_outside_publisher_gets_its_reply_on_its_own_topic(
    deployment: Deployment, start_worker: StartWorker, tiny_model_dir: Path
) -> None:
    """It publishes with its own credentials and reads its own reply topic; a job naming a topic the
    worker may not write is dead-lettered, and the worker goes on."""
    deployment.create_topics_as_operator()
    deployment.create_publisher_topics()
    unlisted = f"{deployment.partner_replies}-unlisted"
    create_topics(
        deployment.kafka.settings(ADMIN),
        [TopicSpec(unlisted, 1, retention_ms=3_600_000)],
        deployment.topics.max_message_bytes,
    )
    worker = start_worker(**deployment.kafka.credentials(WORKER))
    partner = deployment.kafka.client_config(PARTNER)
    producer = producer_config(deployment.kafka.settings(PARTNER), deployment.topics, client_id="partner")
    replies = Consumer(
        partner | {"group.id": f"{deployment.partner_replies}.reader", "auto.offset.reset": "earliest"}
    )
    replies.subscribe([deployment.partner_replies])
    image = make_image_bytes("PNG", seed=23)
    stray = caption_request(image, reply_topic=unlisted)
    job = caption_request(image, reply_topic=deployment.partner_replies)

    try:
        publish(producer, deployment.topics.requests, stray)
        publish(producer, deployment.topics.requests, job)
        reply = await_reply(replies, job.correlation_id)
    finally:
        replies.close()

    assert reply.status is ReplyStatus.SUCCEEDED
    assert reply.title == reference_captioner(tiny_model_dir).caption(image)
    overview = wait_until(
        lambda: (found := deployment.dead_letters())["total"] == 1 and found,
        timeout_s=60,
        interval_s=1,
        message="the stray job was not dead-lettered",
    )
    assert [entry["error_class"] for entry in overview["by_error"]] == ["ReplyUndeliverableError"]
    assert worker.alive()


def refusal(config: dict[str, Any], refused: Callable[[KafkaError], bool]) -> list[KafkaError]:
    """The errors a client reports until one is `refused`; it must then get no metadata either."""
    errors: list[KafkaError] = []
    client = Producer(config | {"error_cb": errors.append, "logger": logging.getLogger("refused-client")})
    wait_until(
        lambda: client.poll(0.2) >= 0 and any(refused(error) for error in errors),
        timeout_s=30,
        message=lambda: f"not refused as expected: {errors}",
    )
    with pytest.raises(KafkaException):
        client.list_topics(timeout=2)
    return errors


def test_a_wrong_password_and_a_client_without_tls_are_refused(secured_kafka: SecuredKafka) -> None:
    wrong_password = secured_kafka.client_config(PARTNER, password="not-the-password")
    without_tls = secured_kafka.client_config(PARTNER) | {"security.protocol": "SASL_PLAINTEXT"}
    plaintext = {"bootstrap.servers": secured_kafka.bootstrap, "security.protocol": "PLAINTEXT"}
    untrusted_ca = {k: v for k, v in secured_kafka.client_config(PARTNER).items() if k != "ssl.ca.location"}
    cut_off = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}

    refusal(
        wrong_password,
        lambda error: error.code() == KafkaError._AUTHENTICATION and "invalid credentials" in error.str(),
    )
    for config in (without_tls, plaintext):
        seen = refusal(config, lambda error: error.code() in cut_off)
        assert {error.code() for error in seen} <= cut_off, seen
    refusal(
        untrusted_ca,
        lambda error: error.code() == KafkaError._SSL and "certificate verify failed" in error.str(),
    )
