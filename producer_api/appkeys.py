"""What the application holds (settings, admission, executor, the caption service, Kafka clients), under
typed keys that the route modules share without importing app.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from core.cache_keys import SHARED_SCOPE
from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
from producer_api.admission import Admission
from producer_api.payload import ImageUpload
from producer_api.publisher import RequestPublisher
from producer_api.replies import ReplyListener
from producer_api.service import CaptionResult
from schemas.framing import RecordCodecs

if TYPE_CHECKING:
    from producer_api.draining import Drain  # which reads the settings under these keys


class Captioner(Protocol):
    async def caption(
        self, upload: ImageUpload, *, use_cache: bool = True, scope: str = SHARED_SCOPE
    ) -> CaptionResult: ...


API_SETTINGS = web.AppKey("api_settings", ApiSettings)
KAFKA_SETTINGS = web.AppKey("kafka_settings", KafkaSettings)
TOPIC_SETTINGS = web.AppKey("topic_settings", TopicSettings)
IMAGE_SETTINGS = web.AppKey("image_settings", ImageSettings)
CACHE_SETTINGS = web.AppKey("cache_settings", CacheSettings)
ADMISSION = web.AppKey("admission", Admission)
REQUEST_EXECUTOR = web.AppKey("request_executor", ThreadPoolExecutor)
SERVICE: web.AppKey[Captioner] = web.AppKey("caption_service")
PUBLISHER = web.AppKey("request_publisher", RequestPublisher)
LISTENER = web.AppKey("reply_listener", ReplyListener)
DRAIN: web.AppKey[Drain] = web.AppKey("drain")
RECORD_CODECS = web.AppKey("record_codecs", RecordCodecs)
