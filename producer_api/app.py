"""The aiohttp application: routes, error middleware, and the Kafka clients' lifecycle.

A stop (SIGTERM) closes the listener, drains the caption requests in flight (producer_api.draining),
and only then closes the Kafka clients their answers need."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from confluent_kafka.admin import AdminClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.broker_watch import BrokerWatch
from core.errors import CaptionerError
from core.event_loop import new_event_loop
from core.kafka_config import API_CLIENT_PREFIX, client_config, consumer_config, producer_config
from core.logs import LIBRDKAFKA_LOG
from core.schema_registry import PREPARE_TIMEOUT_S, prepare_writers
from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
from core.topics import api_topic_names, ensure_topics
from producer_api import metrics
from producer_api.admission import Admission
from producer_api.appkeys import (
    ADMISSION,
    API_SETTINGS,
    CACHE_SETTINGS,
    DRAIN,
    IMAGE_SETTINGS,
    KAFKA_SETTINGS,
    LISTENER,
    PUBLISHER,
    RECORD_CODECS,
    REQUEST_EXECUTOR,
    SERVICE,
    TOPIC_SETTINGS,
)
from producer_api.auth import METRICS_PATH, WWW_AUTHENTICATE, ApiKeys, auth_middleware
from producer_api.batch import BATCH_PATH, predict_batch
from producer_api.cache import CacheRuntime, cache_bypassed, cache_verifier, start_caption_cache
from producer_api.demo import add_demo_routes
from producer_api.docs import add_docs_routes
from producer_api.draining import CUT_ANSWER_S, Drain, drain_middleware, drain_on_shutdown
from producer_api.errors import (
    RequestTimeoutError,
    ShuttingDownError,
    UnauthorizedError,
    error_body,
    http_status,
)
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
from producer_api.scoping import request_scope
from producer_api.service import CaptionResult, CaptionService
from producer_api.serving import ApiRunner, name_the_server, plain_error, serve
from producer_api.tracing import tracing_middleware
from schemas.framing import SINGLE_OBJECT_CODECS, RecordCodecs

log = logging.getLogger(__name__)

# aiohttp's own limits on the request head, pinned here so an upgrade cannot loosen them: a head
# costs at most MAX_HEADERS lines of MAX_LINE_BYTES, and one that never completes is dropped after
# KEEPALIVE_TIMEOUT_S (aiohttp's idle timer also runs before the first request of a connection).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128
KEEPALIVE_TIMEOUT_S = 75.0
REQUEST_WORK_THREADS = 4
# After the drain: for the last answers to be written, then for each Kafka client to close.
RESPONSE_FLUSH_S = 5.0
CLIENT_CLOSE_S = 5.0
# The most a stop takes past the drain bound (ApiSettings.drain_timeout_s): what a grace period adds.
MAX_STOP_AFTER_DRAIN_S = CUT_ANSWER_S + RESPONSE_FLUSH_S + 3 * CLIENT_CLOSE_S  # publisher, replies, cache


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(error: CaptionerError) -> web.Response:
    headers = {}
    if "retry_after_s" in error.fields:
        headers["Retry-After"] = str(error.fields["retry_after_s"])
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    response = web.json_response(error_body(error), status=http_status(error), headers=headers)
    if isinstance(error, RequestTimeoutError | ShuttingDownError):
        # a client that trickles its body gets no second request on this connection, nor does one of
        # an instance that is stopping
        response.force_close()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CaptionerError as error:
        if error.detail:
            log.info("%s %s: %s (%s)", request.method, request.path, error.code, error.detail)
        return json_error(error)
    except web.HTTPException as exc:  # aiohttp's own (404, 405, 413): its standard phrase, not its text
        if exc.status < 400:
            raise
        response = plain_error(exc.status)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
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
        return await app[SERVICE].caption(
            upload, use_cache=not cache_bypassed(request.headers), scope=request_scope(request)
        )


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics_endpoint(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def kafka_clients(app: web.Application) -> AsyncIterator[None]:
    """Checks its topics exist (creating them only if missing), starts the reply listener before any job can
    be published, closes every client it started, in reverse order: at the stop, and at once when a later
    start-up step fails."""
    async with contextlib.AsyncExitStack() as started:
        await _start_kafka_clients(app, started)
        # The cleanup runs after the drain (on_shutdown): no request waits on these clients any more.
        yield


async def _start_kafka_clients(app: web.Application, started: contextlib.AsyncExitStack) -> None:
    """Each client goes on `started`, to be closed, as soon as it exists."""
    api, kafka, topics = app[API_SETTINGS], app[KAFKA_SETTINGS], app[TOPIC_SETTINGS]
    codecs = app[RECORD_CODECS]
    loop = asyncio.get_running_loop()
    brokers = BrokerWatch()  # every client's librdkafka lines and errors, and whether a broker answers
    verifier = cache_verifier(app[CACHE_SETTINGS])  # first: a bad key file stops the API at once
    needed = api_topic_names(topics, cache=verifier is not None)
    await asyncio.to_thread(
        functools.partial(ensure_topics, kafka, topics, names=needed, client_log=LIBRDKAFKA_LOG)
    )
    # With a registry, the request schema is registered now, so that encoding on the request path makes
    # no registry request (and none on the event loop).
    await asyncio.to_thread(
        prepare_writers, [(codecs.requests, topics.requests)], timeout_s=PREPARE_TIMEOUT_S
    )
    cache = None
    if verifier is not None:
        cache = await start_caption_cache(
            app[CACHE_SETTINGS],
            verifier=verifier,
            api=api,
            kafka=kafka,
            topics=topics,
            decode=codecs.cache_entries.decode,
            client=brokers.client_config(),
        )
        started.push_async_callback(asyncio.to_thread, cache.reader.close, timeout_s=CLIENT_CLOSE_S)
    partition = (
        api.reply_partition if api.reply_partition is not None else random.randrange(topics.reply_partitions)
    )
    pending = PendingReplies()
    client_id = f"{API_CLIENT_PREFIX}{api.instance_id}"
    listener = ReplyListener(
        config=consumer_config(kafka, topics, client_id=client_id, group_id=client_id),
        topic=topics.replies,
        partition=partition,
        pending=pending,
        loop=loop,
        decode=codecs.replies.decode,
        brokers=brokers,
    )
    started.push_async_callback(asyncio.to_thread, listener.close, timeout_s=CLIENT_CLOSE_S)  # started or not
    await asyncio.to_thread(listener.start, timeout_s=30.0)
    publisher = RequestPublisher(
        config=producer_config(kafka, topics, client_id=client_id)
        | {"message.timeout.ms": int(api.request_timeout_s * 1000)},
        loop=loop,
        brokers=brokers,
    )
    publisher.start()
    started.push_async_callback(publisher.close, timeout_s=CLIENT_CLOSE_S)
    broker_watch = asyncio.create_task(publisher.watch_brokers(topic=topics.requests))
    started.callback(broker_watch.cancel)
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
        encode=codecs.requests.writer(topics.requests),
    )
    app[READINESS] = _readiness(api, kafka, topics, listener, publisher, brokers, cache)
    log.info("API instance %s reads replies from %s[%d]", api.instance_id, topics.replies, partition)


def _readiness(
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    listener: ReplyListener,
    publisher: RequestPublisher,
    brokers: BrokerWatch,
    cache: CacheRuntime | None,
) -> Readiness:
    workers = None
    if api.ready_needs_worker:
        admin = AdminClient(
            client_config(kafka, client_id=f"{API_CLIENT_PREFIX}{api.instance_id}-readiness")
            | brokers.client_config(statistics=False)
        )
        group = WorkerGroup(
            admin, group_id=api.worker_group_id, topic=topics.requests, reachable=brokers.reachable
        )
        workers = WorkersCheck(group.holders, group_id=api.worker_group_id)
    return Readiness(
        listener=listener,
        broker=BrokerCheck(functools.partial(publisher.check_broker, topic=topics.requests, timeout_s=2.0)),
        workers=workers,
        cache_reader=cache.reader if cache else None,
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
    # Tracing, then metrics, outermost: they see the status the client gets, 401s and 503s included.
    # The drain and auth sit inside error_middleware, which answers their 503s and 401s.
    drain = Drain()
    middlewares: list[Middleware] = [
        tracing_middleware,
        metrics.metrics_middleware,
        error_middleware,
        drain_middleware(drain),
    ]
    keys = ApiKeys(api.api_keys())
    if keys:
        middlewares.append(auth_middleware(keys, metrics_open=api.metrics_port is None))
    # client_max_size bounds aiohttp's own request.read()/post(); predict reads through plan_body's limit.
    app = web.Application(middlewares=middlewares, client_max_size=api.max_image_bytes * 2)
    app.on_response_prepare.append(name_the_server)
    app.on_shutdown.append(drain_on_shutdown)
    app[DRAIN] = drain
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
    metrics_app.on_response_prepare.append(name_the_server)
    metrics_app.router.add_get(METRICS_PATH, metrics_endpoint)
    runner = ApiRunner(metrics_app, access_log=None)
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
    codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
) -> web.Application:
    """codecs: the record framings (core.schema_registry.record_codecs)."""
    app = make_api_app(api=api, images=images)
    app[RECORD_CODECS] = codecs
    app[KAFKA_SETTINGS] = kafka
    app[TOPIC_SETTINGS] = topics
    app[CACHE_SETTINGS] = cache
    app.cleanup_ctx.append(kafka_clients)
    return app


def run_api(
    *,
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    images: ImageSettings,
    cache: CacheSettings,
    codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, answer every request in flight (the drain,
    bounded by api.drain_timeout_s), close. The settings are the ones its entry point read."""
    app = make_app(api=api, kafka=kafka, topics=topics, images=images, cache=cache, codecs=codecs)
    # The Runner cancels what is left on the loop and closes it, as web.run_app would.
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(
            serve(
                app,
                host=api.host,
                port=api.port,
                # what aiohttp waits for a handler after the drain: only the last answers' writing
                shutdown_timeout=RESPONSE_FLUSH_S,
                access_log=None,
                keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                max_line_size=MAX_LINE_BYTES,
                max_field_size=MAX_LINE_BYTES,
                max_headers=MAX_HEADERS,
            )
        )
    log.info("stopped")
