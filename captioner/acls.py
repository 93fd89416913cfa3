"""Who may do what on the cluster, as Kafka ACLs: each role's least privilege, from the topic settings and
the principals' names. `captioner topics acls` applies them (as a super user); the table "Who may write
where" in docs/security.md is this module's `markdown_table`, which a test keeps equal.

Roles:
- the API publishes jobs and reads replies and the caption cache; it never writes a reply or a cache entry;
- the worker reads jobs and retry tiers and writes every outcome: replies (the service's, each outside
  publisher's, each bulk run's), retry tiers, dead letters, the caption cache;
- the operator creates the topics (`captioner topics create`), reads and replays dead letters
  (`captioner dlq`), and runs `captioner caption --via kafka`, which creates and deletes a reply topic of
  its own under `<replies>.bulk.`;
- an outside publisher writes jobs to the request topic and reads its own reply topic, nothing else.

Nobody but the worker may write a reply topic or the cache (anyone else could forge answers), and nobody
needs CREATE at start: the API and the worker only check that their topics exist (core/topics.py).
A consumer that only assign()s partitions still names a group and asks for its coordinator, which takes
DESCRIBE on that group; only a group that commits needs READ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from captioner.bulk.kafka import BULK_CLIENT_PREFIX, reply_topic_prefix
from captioner.dlq.ledger import DEFAULT_NAMESPACE
from captioner.dlq.reader import READER_GROUP, describe_kafka_error
from captioner.errors import KafkaRefusedError, UsageError
from core.kafka_config import API_CLIENT_PREFIX, client_config
from core.logs import LIBRDKAFKA_LOG
from core.settings import KafkaSettings, TopicSettings, transactional_id_prefix
from core.topics import topic_specs

# SCRAM's iteration count: Kafka takes 4096 at least; each login costs the broker this many hashes.
SCRAM_ITERATIONS = 8192
TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
TRANSACTIONAL_ID = ResourceType.TRANSACTIONAL_ID
LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
CREATE, DELETE = AclOperation.CREATE, AclOperation.DELETE


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL, with the role it serves and why, for the listing and docs/security.md."""

    role: str
    principal: str
    resource: ResourceType
    name: str
    pattern: ResourcePatternType
    operation: AclOperation
    why: str

    def binding(self) -> AclBinding:
        return AclBinding(
            self.resource,
            self.name,
            self.pattern,
            self.principal,
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )

    @property
    def resource_text(self) -> str:
        kind = {TOPIC: "topic", GROUP: "group", TRANSACTIONAL_ID: "transactional id"}[self.resource]
        return f"{kind} {self.name}{'*' if self.pattern == PREFIXED else ''}"


@dataclass(frozen=True)
class Publisher:
    """A system outside the service that publishes jobs and reads its replies from a topic of its own.
    Its consumers' group ids start with that topic's name."""

    principal: str
    reply_topic: str

    @classmethod
    def parse(cls, text: str) -> Publisher:
        """`User:team=team.replies`"""
        principal, _, reply_topic = text.partition("=")
        if not reply_topic:
            raise UsageError(f"--publisher takes PRINCIPAL=REPLY_TOPIC, not {text!r}")
        return cls(principal=check_principal(principal), reply_topic=reply_topic)


@dataclass(frozen=True)
class Principals:
    """Each role's principal (`User:<name>`); a role left out gets no ACLs."""

    api: str | None = None
    worker: str | None = None
    operator: str | None = None
    publishers: tuple[Publisher, ...] = ()


@dataclass(frozen=True)
class WorkerGroups:
    """The workers' two consumer groups (WorkerSettings.worker_group_id and its retry_group_id)."""

    requests: str
    retries: str


def check_principal(text: str) -> str:
    kind, _, name = text.partition(":")
    if kind != "User" or not name:
        raise UsageError(f"a principal is User:<name>, not {text!r}")
    return text


@dataclass(frozen=True)
class _Role:
    role: str
    principal: str

    def topic(self, name: str, operation: AclOperation, why: str, *, prefixed: bool = False) -> Grant:
        return Grant(
            self.role, self.principal, TOPIC, name, PREFIXED if prefixed else LITERAL, operation, why
        )

    def group(self, name: str, operation: AclOperation, why: str, *, prefixed: bool = False) -> Grant:
        return Grant(
            self.role, self.principal, GROUP, name, PREFIXED if prefixed else LITERAL, operation, why
        )

    def transactional_ids(self, prefix: str, operation: AclOperation, why: str) -> Grant:
        return Grant(self.role, self.principal, TRANSACTIONAL_ID, prefix, PREFIXED, operation, why)


def grants(principals: Principals, topics: TopicSettings, groups: WorkerGroups) -> list[Grant]:
    """Every role's grants, in the order of docs/security.md's table."""
    found: list[Grant] = []
    if principals.api:
        found += api_grants(principals.api, topics, groups)
    if principals.worker:
        found += worker_grants(principals.worker, topics, groups, principals.publishers)
    if principals.operator:
        found += operator_grants(principals.operator, topics)
    for publisher in principals.publishers:
        found += publisher_grants(publisher, topics)
    return found


def api_grants(principal: str, topics: TopicSettings, groups: WorkerGroups) -> list[Grant]:
    api = _Role("api", principal)
    return [
        api.topic(topics.requests, WRITE, "publishes jobs"),
        api.topic(topics.replies, READ, "reads its reply partition"),
        api.topic(topics.captions, READ, "reads the caption cache"),
        api.group(API_CLIENT_PREFIX, DESCRIBE, "its assign()-only consumers' groups", prefixed=True),
        api.group(groups.requests, DESCRIBE, "/readyz looks for workers holding partitions"),
    ]


def worker_grants(
    principal: str, topics: TopicSettings, groups: WorkerGroups, publishers: Iterable[Publisher] = ()
) -> list[Grant]:
    worker = _Role("worker", principal)
    return [
        worker.topic(topics.requests, READ, "takes jobs"),
        *(
            worker.topic(tier, operation, "retries a job later")
            for tier in topics.retry_topics
            for operation in (READ, WRITE)
        ),
        worker.topic(topics.dead_letter, WRITE, "dead-letters a job"),
        worker.topic(topics.replies, WRITE, "answers the API"),
        worker.topic(reply_topic_prefix(topics), WRITE, "answers bulk runs", prefixed=True),
        *(worker.topic(p.reply_topic, WRITE, "answers an outside publisher") for p in publishers),
        worker.topic(topics.captions, WRITE, "fills the caption cache"),
        worker.group(groups.requests, READ, "the request topic's group"),
        worker.group(groups.retries, READ, "the retry tiers' group"),
        worker.transactional_ids(
            transactional_id_prefix(groups.requests), WRITE, "commits its outcomes and offsets (exactly once)"
        ),
    ]


def operator_grants(principal: str, topics: TopicSettings) -> list[Grant]:
    operator = _Role("operator", principal)
    service_topics = [spec.name for spec in topic_specs(topics)]
    bulk = reply_topic_prefix(topics)
    return [
        *(operator.topic(name, CREATE, "`captioner topics create`") for name in service_topics),
        *(
            operator.topic(name, DESCRIBE, "`topics create` checks it")
            for name in (topics.replies, topics.captions)
        ),
        operator.topic(topics.requests, WRITE, "`dlq replay`, `caption --via kafka`"),
        *(operator.topic(tier, WRITE, "`dlq replay`") for tier in topics.retry_topics),
        operator.topic(topics.dead_letter, READ, "`dlq list`, `show`, `replay`"),
        *(
            operator.topic(bulk, operation, "`caption --via kafka`: its own reply topic", prefixed=True)
            for operation in (CREATE, DELETE, READ)
        ),
        operator.group(READER_GROUP, DESCRIBE, "`dlq list`, `show` (assign() only)"),
        operator.group(f"{DEFAULT_NAMESPACE}.", READ, "`dlq replay`'s ledger", prefixed=True),
        operator.group(BULK_CLIENT_PREFIX, DESCRIBE, "`caption --via kafka` (assign() only)", prefixed=True),
    ]


def publisher_grants(publisher: Publisher, topics: TopicSettings) -> list[Grant]:
    outside = _Role("publisher", publisher.principal)
    return [
        outside.topic(topics.requests, WRITE, "publishes jobs"),
        outside.topic(publisher.reply_topic, READ, "reads its replies"),
        outside.group(publisher.reply_topic, READ, "its consumers' groups", prefixed=True),
    ]


def markdown_table(found: Iterable[Grant]) -> str:
    """docs/security.md's table: one row per principal and resource, its operations together."""
    rows: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for grant in found:
        operations, reasons = rows.setdefault((grant.principal, grant.resource_text), ([], []))
        operations.append(grant.operation.name)
        if grant.why not in reasons:
            reasons.append(grant.why)
    lines = ["| principal | resource | allowed | for |", "|---|---|---|---|"]
    lines += [
        f"| `{principal}` | {resource.rsplit(' ', 1)[0]} `{resource.rsplit(' ', 1)[1]}` | "
        f"{', '.join(operations)} | {'; '.join(reasons)} |"
        for (principal, resource), (operations, reasons) in rows.items()
    ]
    return "\n".join(lines)


def listing(found: Iterable[Grant]) -> str:
    """One line per ACL, as `captioner topics acls --dry-run` prints them."""
    return "\n".join(
        f"ALLOW {g.principal} {g.operation.name} {g.resource_text}  ({g.role}: {g.why})" for g in found
    )


def apply_grants(kafka: KafkaSettings, found: list[Grant], *, timeout_s: float = 30.0) -> None:
    """Creates the ACLs (creating one that exists changes nothing); raises naming each one refused."""
    admin = _admin(kafka)  # held until every answer is in: a client that goes away drops them
    futures = admin.create_acls([grant.binding() for grant in found], request_timeout=timeout_s)
    _raise_refusals("ACL", futures, timeout_s=timeout_s)


def set_scram_passwords(
    kafka: KafkaSettings, passwords: Mapping[str, str], *, timeout_s: float = 30.0
) -> None:
    """Creates or replaces the SCRAM-SHA-512 credential of each user."""
    credential = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    admin = _admin(kafka)
    futures = admin.alter_user_scram_credentials(
        [
            UserScramCredentialUpsertion(user, credential, password.encode())
            for user, password in passwords.items()
        ],
        request_timeout=timeout_s,
    )
    _raise_refusals("SCRAM credential", futures, timeout_s=timeout_s)


def _admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(client_config(kafka, client_id="captioner-acls") | {"logger": LIBRDKAFKA_LOG})


def _raise_refusals(what: str, futures: Mapping[Any, Future[Any]], *, timeout_s: float) -> None:
    refused = []
    for subject, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            refused.append(f"{subject}: {describe_kafka_error(exc)}")
        except TimeoutError:
            refused.append(f"{subject}: no answer within {timeout_s:g} s")
    if refused:
        raise KafkaRefusedError(f"{what} refused: " + "; ".join(refused))
