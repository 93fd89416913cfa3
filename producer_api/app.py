"""The aiohttp application: routes, error middleware, and the Kafka clients' lifecycle."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from captioner.event_loop import new_event_loop
from captioner.kafka_config import consumer_config, producer_config
from captioner.settings import ApiSettings, ImageSettings, KafkaSettings, TopicSettings
from captioner.topics import ensure_topics
from producer_api import metrics
from producer_api.errors import ApiError, OverloadedError
from producer_api.payload import read_upload
from producer_api.publisher import RequestPublisher
from producer_api.replies import PendingReplies, ReplyListener
from producer_api.service import CaptionService

log = logging.getLogger(__name__)

API_SETTINGS = web.AppKey("api_settings", ApiSettings)
KAFKA_SETTINGS = web.AppKey("kafka_settings", KafkaSettings)
TOPIC_SETTINGS = web.AppKey("topic_settings", TopicSettings)
IMAGE_SETTINGS = web.AppKey("image_settings", ImageSettings)
SERVICE = web.AppKey("caption_service", CaptionService)
PUBLISHER = web.AppKey("request_publisher", RequestPublisher)
LISTENER = web.AppKey("reply_listener", ReplyListener)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(error: ApiError) -> web.Response:
    headers = {}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(error.details.get("retry_after_s", 1))
    return web.json_response(error.body(), status=error.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return json_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"error": {"code": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason}},
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
    service = request.app[SERVICE]
    metrics.IN_FLIGHT.inc()
    status = 500
    try:
        image = await read_upload(request, max_image_bytes=request.app[API_SETTINGS].max_image_bytes)
        result = await service.caption(image)
        status = 200
        return web.json_response(result.body())
    except ApiError as error:
        status = error.status
        raise
    finally:
        metrics.IN_FLIGHT.dec()
        metrics.REQUESTS.labels(status=str(status)).inc()
        metrics.LATENCY.observe(time.perf_counter() - started)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    listener = request.app.get(LISTENER)
    publisher = request.app.get(PUBLISHER)
    topics = request.app[TOPIC_SETTINGS]
    assigned = listener is not None and listener.assigned.is_set()
    reachable = publisher is not None and await publisher.check_broker(topic=topics.requests, timeout_s=2.0)
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
    image_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="image-check")
    app[LISTENER] = listener
    app[PUBLISHER] = publisher
    app[SERVICE] = CaptionService(
        api=api,
        topics=topics,
        publisher=publisher,
        pending=pending,
        reply_partition=partition,
        image_executor=image_executor,
        max_image_pixels=app[IMAGE_SETTINGS].max_image_pixels,
    )
    log.info("API instance %s reads replies from %s[%d]", api.instance_id, topics.replies, partition)
    yield
    broker_watch.cancel()
    await publisher.close(timeout_s=api.shutdown_timeout_s)
    await asyncio.to_thread(listener.close, timeout_s=5.0)
    image_executor.shutdown(wait=False, cancel_futures=True)


def make_app(
    *,
    api: ApiSettings | None = None,
    kafka: KafkaSettings | None = None,
    topics: TopicSettings | None = None,
    images: ImageSettings | None = None,
) -> web.Application:
    api = api or ApiSettings()
    app = web.Application(middlewares=[error_middleware], client_max_size=api.max_image_bytes * 2)
    app[API_SETTINGS] = api
    app[KAFKA_SETTINGS] = kafka or KafkaSettings()
    app[TOPIC_SETTINGS] = topics or TopicSettings()
    app[IMAGE_SETTINGS] = images or ImageSettings()
    app.cleanup_ctx.append(kafka_clients)
    app.router.add_post("/api/v1/predictions", predict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
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
        print=lambda message: log.info("%s", message),
    )
