"""The benchmark's broker warm-up, against the real broker: round trips come back, the topic is removed."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient

from bench.warmup import warm_up_broker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_warm_up_drives_round_trips_and_removes_its_topic(kafka_bootstrap: str) -> None:
    topic = f"t-warmup-{uuid.uuid4().hex[:6]}"

    result = warm_up_broker(kafka_bootstrap, topic=topic, round_trips=40, payload_bytes=4096)

    assert result.round_trips == 40
    assert 0 < result.last_ms <= result.seconds * 1000
    assert "40 produce+fetch round trips" in result.describe()
    # Deletion reaches the metadata a moment after the admin call returns.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wait_until(
        lambda: topic not in admin.list_topics(timeout=10).topics,
        timeout_s=10,
        interval_s=0.2,
        message=f"{topic} is still listed",
    )
