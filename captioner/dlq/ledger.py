"""Which dead letters were replayed already, read from the replay consumer groups' own commits.

Each filter set replays under its own consumer group, `<namespace>.<filter id>` (`<namespace>.all` without
a filter), and commits its filter as the metadata of each offset. A group commits only past records it has
handled: re-published and acknowledged, or not selected by its filter. So a record has been replayed iff
some group of the namespace committed past it and that group's filter selects it.

Every run reads this ledger first and passes over records in it. So running one filter twice replays
nothing the second time; runs with different, overlapping filters never replay a record twice; and records
that one filter skipped stay replayable under another. A new namespace (`--group`) starts a fresh ledger.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException

from captioner.dlq.filters import DeadLetterFilter
from captioner.dlq.reader import describe_kafka_error
from captioner.dlq.records import DeadLetter
from captioner.errors import KafkaUnavailableError, UsageError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "captioner-dlq-replay"
METADATA_LIMIT = 4096  # the broker's default offset.metadata.max.bytes
_FORMAT = "captioner-dlq-replay/1"


def replay_group(namespace: str, selection: DeadLetterFilter) -> str:
    return f"{namespace}.{'all' if selection.selects_all else selection.fingerprint()}"


def commit_metadata(selection: DeadLetterFilter) -> str:
    text = json.dumps({"format": _FORMAT, "filter": selection.to_json()}, sort_keys=True)
    if len(text.encode()) > METADATA_LIMIT:
        raise UsageError(
            f"the filter takes {len(text.encode())} bytes, more than Kafka keeps with an offset "
            f"({METADATA_LIMIT}); replay fewer --id values per run"
        )
    return text


def filter_of_metadata(text: str | None) -> DeadLetterFilter | None:
    try:
        data = json.loads(text or "")
        return DeadLetterFilter.from_json(data["filter"]) if data.get("format") == _FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class ReplayedRange:
    """One group's committed positions, under the filter it committed them with."""

    group_id: str
    selection: DeadLetterFilter
    positions: dict[int, int]

    def covers(self, record: DeadLetter) -> bool:
        return record.offset < self.positions.get(record.partition, 0) and self.selection.matches(record)


@dataclass(frozen=True)
class ReplayLedger:
    ranges: tuple[ReplayedRange, ...] = field(default=())

    def replayed_by(self, record: DeadLetter) -> str | None:
        return next((r.group_id for r in self.ranges if r.covers(record)), None)


def read_ledger(admin: Any, *, namespace: str, topic: str, timeout_s: float) -> ReplayLedger:
    """Every replay group of the namespace that committed offsets of `topic`; raises rather than
    return a partial ledger, which could replay records a second time."""
    try:
        listing = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"listing consumer groups: {describe_kafka_error(exc)}") from None
    if listing.errors:
        raise KafkaUnavailableError(f"listing consumer groups: {listing.errors[0]}")
    prefix = f"{namespace}."
    group_ids = sorted(g.group_id for g in listing.valid if g.group_id.startswith(prefix))
    ranges = [r for group_id in group_ids for r in _group_ranges(admin, group_id, topic, timeout_s)]
    return ReplayLedger(tuple(ranges))


def _group_ranges(admin: Any, group_id: str, topic: str, timeout_s: float) -> list[ReplayedRange]:
    request = [ConsumerGroupTopicPartitions(group_id)]
    try:
        future = admin.list_consumer_group_offsets(request, request_timeout=timeout_s)[group_id]
        committed = future.result(timeout=timeout_s).topic_partitions or []
    except KafkaException as exc:
        raise KafkaUnavailableError(f"offsets of group {group_id}: {describe_kafka_error(exc)}") from None
    by_filter: dict[DeadLetterFilter, dict[int, int]] = defaultdict(dict)
    for tp in committed:
        if tp.topic != topic or tp.offset < 0:
            continue
        selection = filter_of_metadata(tp.metadata)
        if selection is None:
            log.warning(
                "group %s has a commit on %s[%d] without a replay filter", group_id, topic, tp.partition
            )
            continue
        by_filter[selection][tp.partition] = tp.offset
    return [ReplayedRange(group_id, selection, positions) for selection, positions in by_filter.items()]
