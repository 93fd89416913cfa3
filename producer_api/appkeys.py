"""What the application holds (settings, admission, executor, the caption service, Kafka clients), under
typed keys that the route modules share without importing app.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from aiohttp import web

from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
from producer_api.admission import Admission
from producer_api.payload import ImageUpload
from producer_api.publisher import RequestPublisher
from producer_api.replies import ReplyListener
from producer_api.service import CaptionResult
from schemas.framing import RecordCodecs


class Captioner(Protocol):
    async def caption(self, upload: ImageUpload, *, use_cache: bool = True) -> CaptionResult: ...


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
RECORD_CODECS = web.AppKey("record_codecs", RecordCodecs)
