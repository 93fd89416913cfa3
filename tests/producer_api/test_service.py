"""CaptionService: a large image's job record is encoded on the executor it is given, off the event loop;
a small one's on the loop, where that costs less than the hand-off."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from core.settings import ApiSettings, TopicSettings
from producer_api.payload import ImageUpload
from producer_api.replies import PendingReplies
from producer_api.service import INLINE_ENCODE_MAX_BYTES, CaptionService
from schemas import REQUEST_CODEC, CaptionRequest
from tests.producer_api.conftest import FakePublisher


class RecordingEncoder:
    """REQUEST_CODEC.encode, noting the thread each record was encoded on."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __call__(self, job: CaptionRequest) -> bytes:
        self.threads.append(threading.current_thread())
        return REQUEST_CODEC.encode(job)


async def encoded_on(image: bytes) -> threading.Thread:
    """The thread the job of `image` was encoded on."""
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

        result = await service.caption(ImageUpload(data=image, content_type="image/png"))

    assert result.reply.title == f"a picture of {len(image)} bytes"
    [thread] = encoder.threads
    return thread


async def test_a_large_images_job_is_encoded_on_the_executor_not_on_the_event_loop() -> None:
    thread = await encoded_on(b"x" * (INLINE_ENCODE_MAX_BYTES + 1))

    assert thread is not threading.current_thread()  # the loop's thread
    assert thread.name.startswith("encode")


async def test_a_small_images_job_is_encoded_on_the_loop() -> None:
    assert await encoded_on(b"x" * INLINE_ENCODE_MAX_BYTES) is threading.current_thread()
