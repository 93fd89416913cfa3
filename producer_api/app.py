"""The aiohttp application: routes, error middleware, and the Kafka clients' lifecycle."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.errors import CaptionerError
from core.event_loop import new_event_loop
from core.kafka_config import consumer_config, producer_config
from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
from core.topics import ensure_topics
from producer_api import metrics
from producer_api.admission import Admission
from producer_api.cache import cache_bypassed, start_caption_cache
from producer_api.demo import add_demo_routes
from producer_api.errors import RequestTimeoutError, error_body
from producer_api.payload import ImageUpload, plan_body, prepare_upload, read_body
from producer_api.publisher import RequestPublisher
from producer_api.replies import PendingReplies, ReplyListener
from producer_api.service import CaptionResult, CaptionService

log = logging.getLogger(__name__)

# aiohttp's own limits on the request head, pinned here so an upgrade cannot loosen them: a head
# costs at most MAX_HEADERS lines of MAX_LINE_BYTES, and one that never completes is dropped after
# KEEPALIVE_TIMEOUT_S (aiohttp's idle timer also runs before the first request of a connection).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128
KEEPALIVE_TIMEOUT_S = 75.0
REQUEST_WORK_THREADS = 4


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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(error: CaptionerError) -> web.Response:
    headers = {}
    if "retry_after_s" in error.fields:
        headers["Retry-After"] = str(error.fields["retry_after_s"])
    response = web.json_response(error_body(error), status=error.http_status, headers=headers)
    if isinstance(error, RequestTimeoutError):
        response.force_close()  # a client that trickles its body gets no second request on this connection
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CaptionerError as error:
        if error.detail:
            log.info("%s %s: %s (%s)", request.method, request.path, error.code, error.detail)
        return json_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"error": {"code": exc.reason.lower().replace(" ", "_"), "message": exc.reason}},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            {"error": {"code": "internal_error", "message": "internal error"}}, status=500
        )


async def predict(request: web.Request) -> web.Response:
    started = time.perf_counter()
    metrics.IN_FLIGHT.inc()
    status = 500
    try:
        result = await _admitted_caption(request)
        status = 200
        return web.json_response(result.body())
    except CaptionerError as error:
        status = error.http_status
        raise
    finally:
        metrics.IN_FLIGHT.dec()
        metrics.REQUESTS.labels(status=str(status)).inc()
        metrics.LATENCY.observe(time.perf_counter() - started)


async def _admitted_caption(request: web.Request) -> CaptionResult:
    """Headers, then admission (429 with the body unread), then the body within its deadline (408)."""
    app = request.app
    api = app[API_SETTINGS]
    plan = plan_body(request, max_image_bytes=api.max_image_bytes)
    with app[ADMISSION].admit(plan.reserve) as ticket:
        try:
            async with asyncio.timeout(api.body_read_timeout_s):
                body = await read_body(request, limit=plan.limit)
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within {api.body_read_timeout_s:g} s"
            ) from None
        ticket.shrink_to(len(body))
        upload = await asyncio.get_running_loop().run_in_executor(
            app[REQUEST_EXECUTOR],
            functools.partial(
                prepare_upload,
                body,
                plan,
                max_image_bytes=api.max_image_bytes,
                max_pixels=app[IMAGE_SETTINGS].max_image_pixels,
            ),
        )
        del body  # the image is what is held from here on
        return await app[SERVICE].caption(upload, use_cache=not cache_bypassed(request.headers))


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    listener = request.app.get(LISTENER)
    publisher = request.app.get(PUBLISHER)
    assigned = listener is not None and listener.assigned.is_set()
    reachable = publisher is not None and await publisher.check_broker(
        topic=request.app[TOPIC_SETTINGS].requests, timeout_s=2.0
    )
    body = {
        "status": "ready" if assigned and reachable else "not_ready",
        "broker_reachable": reachable,
        "reply_consumer_assigned": assigned,
        "reply_partition": listener.partition if listener else None,
    }
    return web.json_response(body, status=200 if assigned and reachable else 503)


async def metrics_endpoint(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def kafka_clients(app: web.Application) -> AsyncIterator[None]:
    """Creates topics, starts the reply listener before any job can be published, closes both."""
    api, kafka, topics = app[API_SETTINGS], app[KAFKA_SETTINGS], app[TOPIC_SETTINGS]
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(ensure_topics, kafka, topics)
    cache = await start_caption_cache(app[CACHE_SETTINGS], api=api, kafka=kafka, topics=topics)
    partition = (
        api.reply_partition if api.reply_partition is not None else random.randrange(topics.reply_partitions)
    )
    pending = PendingReplies()
    client_id = f"captioner-api-{api.instance_id}"
    listener = ReplyListener(
        config=consumer_config(kafka, topics, client_id=client_id, group_id=client_id),
        topic=topics.replies,
        partition=partition,
        pending=pending,
        loop=loop,
    )
    await asyncio.to_thread(listener.start, timeout_s=30.0)
    publisher = RequestPublisher(
        config=producer_config(kafka, topics, client_id=client_id)
        | {"message.timeout.ms": int(api.request_timeout_s * 1000)},
        loop=loop,
    )
    publisher.start()
    broker_watch = asyncio.create_task(publisher.watch_brokers(topic=topics.requests))
    app[LISTENER] = listener
    app[PUBLISHER] = publisher
    app[SERVICE] = CaptionService(
        api=api,
        topics=topics,
        publisher=publisher,
        pending=pending,
        reply_partition=partition,
        cache=cache.captions if cache else None,
    )
    log.info("API instance %s reads replies from %s[%d]", api.instance_id, topics.replies, partition)
    yield
    broker_watch.cancel()
    await publisher.close(timeout_s=api.shutdown_timeout_s)
    await asyncio.to_thread(listener.close, timeout_s=5.0)
    if cache is not None:
        await asyncio.to_thread(cache.reader.close, timeout_s=5.0)


async def request_executor(app: web.Application) -> AsyncIterator[None]:
    """Threads that parse bodies and check images, so neither runs on the event loop."""
    executor = ThreadPoolExecutor(max_workers=REQUEST_WORK_THREADS, thread_name_prefix="request-work")
    app[REQUEST_EXECUTOR] = executor
    yield
    executor.shutdown(wait=False, cancel_futures=True)


def make_api_app(*, api: ApiSettings, images: ImageSettings) -> web.Application:
    """The HTTP surface without Kafka: routes, error middleware, admission and the request executor.
    The caller puts a caption service under SERVICE (make_app does, once the Kafka clients start)."""
    # client_max_size bounds aiohttp's own request.read()/post(); predict reads through plan_body's limit.
    app = web.Application(middlewares=[error_middleware], client_max_size=api.max_image_bytes * 2)
    app[API_SETTINGS] = api
    app[IMAGE_SETTINGS] = images
    app[ADMISSION] = Admission(max_in_flight=api.max_in_flight, max_buffered_bytes=api.max_buffered_bytes)
    app.cleanup_ctx.append(request_executor)
    app.router.add_post("/api/v1/predictions", predict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    add_demo_routes(app)
    return app


def make_app(
    *,
    api: ApiSettings | None = None,
    kafka: KafkaSettings | None = None,
    topics: TopicSettings | None = None,
    images: ImageSettings | None = None,
    cache: CacheSettings | None = None,
) -> web.Application:
    app = make_api_app(api=api or ApiSettings(), images=images or ImageSettings())
    app[KAFKA_SETTINGS] = kafka or KafkaSettings()
    app[TOPIC_SETTINGS] = topics or TopicSettings()
    app[CACHE_SETTINGS] = cache or CacheSettings()
    app.cleanup_ctx.append(kafka_clients)
    return app


def run_api(api: ApiSettings | None = None) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, let in-flight requests finish (bounded), close."""
    api = api or ApiSettings()
    web.run_app(
        make_app(api=api),
        loop=new_event_loop(),
        host=api.host,
        port=api.port,
        shutdown_timeout=api.shutdown_timeout_s,
        access_log=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
        max_headers=MAX_HEADERS,
        print=lambda message: log.info("%s", message),
    )
