"""The aiohttp application: routes, error middleware, and the Kafka clients' lifecycle."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Middleware
from confluent_kafka.admin import AdminClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.broker_watch import BrokerWatch
from core.errors import CaptionerError
from core.event_loop import new_event_loop
from core.kafka_config import client_config, consumer_config, producer_config
from core.logs import LIBRDKAFKA_LOG
from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
from core.topics import ensure_topics
from producer_api import metrics
from producer_api.admission import Admission
from producer_api.appkeys import (
    ADMISSION,
    API_SETTINGS,
    CACHE_SETTINGS,
    IMAGE_SETTINGS,
    KAFKA_SETTINGS,
    LISTENER,
    PUBLISHER,
    REQUEST_EXECUTOR,
    SERVICE,
    TOPIC_SETTINGS,
)
from producer_api.auth import METRICS_PATH, WWW_AUTHENTICATE, ApiKeys, auth_middleware
from producer_api.batch import BATCH_PATH, predict_batch
from producer_api.cache import cache_bypassed, start_caption_cache
from producer_api.demo import add_demo_routes
from producer_api.docs import add_docs_routes
from producer_api.errors import RequestTimeoutError, UnauthorizedError, error_body
from producer_api.intake import admitted_body
from producer_api.payload import plan_body, prepare_upload
from producer_api.publisher import RequestPublisher
from producer_api.readiness import (
    READINESS,
    BrokerCheck,
    Readiness,
    WorkerGroup,
    WorkersCheck,
    readyz,
)
from producer_api.replies import PendingReplies, ReplyListener
from producer_api.service import CaptionResult, CaptionService
from producer_api.tracing import tracing_middleware

log = logging.getLogger(__name__)

# aiohttp's own limits on the request head, pinned here so an upgrade cannot loosen them: a head
# costs at most MAX_HEADERS lines of MAX_LINE_BYTES, and one that never completes is dropped after
# KEEPALIVE_TIMEOUT_S (aiohttp's idle timer also runs before the first request of a connection).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128
KEEPALIVE_TIMEOUT_S = 75.0
REQUEST_WORK_THREADS = 4


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(error: CaptionerError) -> web.Response:
    headers = {}
    if "retry_after_s" in error.fields:
        headers["Retry-After"] = str(error.fields["retry_after_s"])
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
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
    metrics.IN_FLIGHT.inc()
    try:
        result = await _admitted_caption(request)
        return web.json_response(result.body())
    finally:
        metrics.IN_FLIGHT.dec()


async def _admitted_caption(request: web.Request) -> CaptionResult:
    """Headers, then admission (429 with the body unread), then the body within its deadline (408)."""
    app = request.app
    api = app[API_SETTINGS]
    plan = plan_body(request, max_image_bytes=api.max_image_bytes)
    async with admitted_body(request, plan) as (_ticket, body):
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


async def metrics_endpoint(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def kafka_clients(app: web.Application) -> AsyncIterator[None]:
    """Creates topics, starts the reply listener before any job can be published, closes both."""
    api, kafka, topics = app[API_SETTINGS], app[KAFKA_SETTINGS], app[TOPIC_SETTINGS]
    loop = asyncio.get_running_loop()
    brokers = BrokerWatch()  # every client's librdkafka lines and errors, and whether a broker answers
    await asyncio.to_thread(ensure_topics, kafka, topics, client_log=LIBRDKAFKA_LOG)
    cache = await start_caption_cache(
        app[CACHE_SETTINGS], api=api, kafka=kafka, topics=topics, client=brokers.client_config()
    )
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
        brokers=brokers,
    )
    await asyncio.to_thread(listener.start, timeout_s=30.0)
    publisher = RequestPublisher(
        config=producer_config(kafka, topics, client_id=client_id)
        | {"message.timeout.ms": int(api.request_timeout_s * 1000)},
        loop=loop,
        brokers=brokers,
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
        executor=app[REQUEST_EXECUTOR],
    )
    app[READINESS] = _readiness(api, kafka, topics, listener, publisher, brokers)
    log.info("API instance %s reads replies from %s[%d]", api.instance_id, topics.replies, partition)
    yield
    broker_watch.cancel()
    await publisher.close(timeout_s=api.shutdown_timeout_s)
    await asyncio.to_thread(listener.close, timeout_s=5.0)
    if cache is not None:
        await asyncio.to_thread(cache.reader.close, timeout_s=5.0)


def _readiness(
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    listener: ReplyListener,
    publisher: RequestPublisher,
    brokers: BrokerWatch,
) -> Readiness:
    workers = None
    if api.ready_needs_worker:
        admin = AdminClient(
            client_config(kafka, client_id=f"captioner-api-{api.instance_id}-readiness")
            | brokers.client_config(statistics=False)
        )
        group = WorkerGroup(admin, group_id=api.worker_group_id, topic=topics.requests)
        workers = WorkersCheck(group.holders, group_id=api.worker_group_id)
    return Readiness(
        listener=listener,
        broker=BrokerCheck(functools.partial(publisher.check_broker, topic=topics.requests, timeout_s=2.0)),
        workers=workers,
    )


async def request_executor(app: web.Application) -> AsyncIterator[None]:
    """Threads that parse bodies and check images, so neither runs on the event loop."""
    executor = ThreadPoolExecutor(max_workers=REQUEST_WORK_THREADS, thread_name_prefix="request-work")
    app[REQUEST_EXECUTOR] = executor
    yield
    executor.shutdown(wait=False, cancel_futures=True)


def make_api_app(*, api: ApiSettings, images: ImageSettings) -> web.Application:
    """The HTTP surface without Kafka: routes, error middleware, auth, admission and the request executor.
    The caller puts a caption service under SERVICE (make_app does, once the Kafka clients start)."""
    # Tracing, then metrics, outermost: they see the status the client gets, 401s included.
    middlewares: list[Middleware] = [tracing_middleware, metrics.metrics_middleware, error_middleware]
    keys = ApiKeys(api.api_keys())
    if keys:
        # inside error_middleware, which answers its 401s
        middlewares.append(auth_middleware(keys, metrics_open=api.metrics_port is None))
    # client_max_size bounds aiohttp's own request.read()/post(); predict reads through plan_body's limit.
    app = web.Application(middlewares=middlewares, client_max_size=api.max_image_bytes * 2)
    app[API_SETTINGS] = api
    app[IMAGE_SETTINGS] = images
    app[ADMISSION] = Admission(max_in_flight=api.max_in_flight, max_buffered_bytes=api.max_buffered_bytes)
    app.cleanup_ctx.append(request_executor)
    app.router.add_post("/api/v1/predictions", predict)
    app.router.add_post(BATCH_PATH, predict_batch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if api.metrics_port is None:
        app.router.add_get(METRICS_PATH, metrics_endpoint)
    else:
        app.cleanup_ctx.append(metrics_server)
    add_docs_routes(app)
    add_demo_routes(app)
    return app


async def metrics_server(app: web.Application) -> AsyncIterator[None]:
    """/metrics on its own port (CAPTIONER_API_METRICS_PORT), so it can stay off the public listener."""
    api = app[API_SETTINGS]
    metrics_app = web.Application()
    metrics_app.router.add_get(METRICS_PATH, metrics_endpoint)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, api.host, api.metrics_port).start()
    log.info("metrics on port %s", api.metrics_port)
    yield
    await runner.cleanup()


def make_app(
    *,
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    images: ImageSettings,
    cache: CacheSettings,
) -> web.Application:
    app = make_api_app(api=api, images=images)
    app[KAFKA_SETTINGS] = kafka
    app[TOPIC_SETTINGS] = topics
    app[CACHE_SETTINGS] = cache
    app.cleanup_ctx.append(kafka_clients)
    return app


async def signals_once(_app: web.Application) -> None:
    """After the first SIGTERM or SIGINT, the others are only logged: a second one (a supervisor that
    signals the process group and then each process, `make run` stopping) would otherwise end the wait for
    in-flight requests that the first one started."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, log.info, "signal %d: already stopping", signum)


def run_api(
    *,
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    images: ImageSettings,
    cache: CacheSettings,
) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, let in-flight requests finish (bounded), close.
    The settings are the ones its entry point read."""
    app = make_app(api=api, kafka=kafka, topics=topics, images=images, cache=cache)
    app.on_shutdown.append(signals_once)
    web.run_app(
        app,
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
