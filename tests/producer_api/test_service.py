"""CaptionService: the job record is encoded on the executor it is given, never on the event loop."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from core.settings import ApiSettings, TopicSettings
from producer_api.payload import ImageUpload
from producer_api.replies import PendingReplies
from producer_api.service import CaptionService
from schemas import REQUEST_CODEC, CaptionRequest
from tests.producer_api.conftest import FakePublisher


class RecordingEncoder:
    """REQUEST_CODEC.encode, noting the thread each record was encoded on."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __call__(self, job: CaptionRequest) -> bytes:
        self.threads.append(threading.current_thread())
        return REQUEST_CODEC.encode(job)


async def test_the_job_is_encoded_on_the_executor_not_on_the_event_loop() -> None:
    pending = PendingReplies()
    publisher = FakePublisher(pending)
    encoder = RecordingEncoder()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as executor:
        service = CaptionService(
            api=ApiSettings(instance_id="test"),
            topics=TopicSettings(),
            publisher=publisher,  # type: ignore[arg-type]
            pending=pending,
            reply_partition=0,
            executor=executor,
            encode=encoder,
        )

        result = await service.caption(ImageUpload(data=b"image bytes", content_type="image/png"))

    assert result.reply.title == "a picture of 11 bytes"
    assert len(encoder.threads) == 1
    assert encoder.threads[0] is not threading.current_thread()  # the loop's thread
    assert encoder.threads[0].name.startswith("encode")
