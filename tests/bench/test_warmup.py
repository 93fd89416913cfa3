"""The benchmark's broker warm-up, against the real broker: round trips come back, the topic is removed."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from bench.warmup import warm_up_broker

pytestmark = pytest.mark.integration


def test_warm_up_drives_round_trips_and_removes_its_topic(kafka_bootstrap: str) -> None:
    topic = f"t-warmup-{uuid.uuid4().hex[:6]}"

    result = warm_up_broker(kafka_bootstrap, topic=topic, round_trips=40, payload_bytes=4096)

    assert result.round_trips == 40
    assert 0 < result.last_ms <= result.seconds * 1000
    assert "40 produce+fetch round trips" in result.describe()
    assert not _still_listed(kafka_bootstrap, topic, within_s=10.0)


def _still_listed(bootstrap: str, topic: str, *, within_s: float) -> bool:
    """Deletion reaches the metadata a moment after the admin call returns."""
    admin, give_up = AdminClient({"bootstrap.servers": bootstrap}), time.monotonic() + within_s
    while topic in admin.list_topics(timeout=10).topics:
        if time.monotonic() > give_up:
            return True
        time.sleep(0.2)
    return False
