"""The API's Kafka clients start one after another; a start-up step that fails closes those already
started (in process, against the real broker: no thread or client of theirs is left behind)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

import producer_api.app
from core.cache_signing import write_key_pair
from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
from producer_api.app import make_app
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration

# The threads the API's clients run: the cache reader, the reply listener, the request publisher's two.
CLIENT_THREADS = {"cache-reader", "reply-listener", "request-producer", "delivery-reports"}


class LastStepFailed(Exception):
    pass


def client_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name in CLIENT_THREADS}


async def test_a_failing_start_up_step_closes_the_clients_already_started(
    topics: TopicSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readiness is the last step: by then the cache reader, the reply listener and the publisher run."""
    _private, public = write_key_pair(tmp_path / "cache-keys")
    app = make_app(
        api=ApiSettings(instance_id="startup-test", ready_needs_worker=False),
        kafka=KafkaSettings(),
        topics=topics,
        images=ImageSettings(),
        cache=CacheSettings(enabled=True, verify_keys_file=public),
    )
    started: list[set[threading.Thread]] = []

    def readiness_fails(*_args: object) -> None:
        started.append(client_threads() - before)
        raise LastStepFailed

    monkeypatch.setattr(producer_api.app, "_readiness", readiness_fails)
    before = client_threads()
    server = TestServer(app)

    with pytest.raises(LastStepFailed):
        await server.start_server()

    [running_then] = started
    assert {thread.name for thread in running_then} == CLIENT_THREADS  # the failure came after all started
    await wait_until_async(
        lambda: not any(thread.is_alive() for thread in running_then),
        timeout_s=30,
        message=lambda: f"left running: {[t.name for t in running_then if t.is_alive()]}",
    )
    await server.close()
