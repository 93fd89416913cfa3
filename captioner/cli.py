"""`captioner`: the operators' command line."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from captioner.bulk.options import Via
from captioner.bulk.sinks import Format
from captioner.dlq.commands import dlq_app
from captioner.dlq.errors import RecordNotFoundError
from captioner.errors import ExitCode, KafkaRefusedError, KafkaUnavailableError, OperatorError
from core.errors import KafkaTimeoutError
from core.logs import configure_logging, configure_tool_logging
from core.settings import (
    ImageSettings,
    InvalidSettingError,
    KafkaSettings,
    LogSettings,
    TopicSettings,
    UnknownSettingError,
    WorkerSettings,
    deprecation_warnings,
    load_settings,
    refuse_unknown_variables,
)
from core.topics import TopicNotAuthorizedError, TopicsMissingError

if TYPE_CHECKING:
    from schemas.framing import RecordCodecs

# A requirement of the installed distribution's metadata: its name, and the extra it belongs to.
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WORKER_EXTRA = re.compile(r"""extra\s*==\s*["']worker["']""")


def worker_libraries() -> frozenset[str]:
    """The modules of what `pip install captioner[worker]` adds: pyproject.toml's `worker` extra, the one
    list of them, as this install's metadata has it (a distribution's module is its name in lower case with
    `_` for `-`: huggingface-hub is huggingface_hub)."""
    try:
        requirements = importlib.metadata.requires("captioner") or []
    except importlib.metadata.PackageNotFoundError:
        return frozenset()
    return frozenset(
        found.group(0).lower().replace("-", "_")
        for requirement in requirements
        if _WORKER_EXTRA.search(requirement) and (found := _REQUIREMENT_NAME.match(requirement))
    )


def _needs_worker_extra(missing: ImportError) -> None:
    """A worker library that is not installed ends `captioner worker` with one line saying what to install."""
    name = (missing.name or "").split(".")[0]
    if name in worker_libraries():
        typer.echo(f"captioner worker needs {name}: pip install 'captioner[worker]'", err=True)
        raise typer.Exit(2) from None


# The exit status of each operator error that ends a command early, by class: a subclass ends as its
# family does unless listed itself.
EXIT_CODES: dict[type[OperatorError], ExitCode] = {
    OperatorError: ExitCode.USAGE,
    KafkaUnavailableError: ExitCode.UNAVAILABLE,
    KafkaRefusedError: ExitCode.FAILURES,
    RecordNotFoundError: ExitCode.NOT_FOUND,
}


def exit_code(error: OperatorError) -> ExitCode:
    for cls in type(error).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return ExitCode.USAGE


class OperatorCommands(TyperGroup):
    """Every command: an operator error that ends one early is one line on stderr (with the cluster it
    tried, when it could not reach it) and its exit status."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click.Context
        try:
            return super().invoke(ctx)
        except OperatorError as exc:
            from core.settings import KafkaSettings

            where = ""
            if isinstance(exc, KafkaUnavailableError):
                where = f" (bootstrap servers {load_settings(KafkaSettings).bootstrap_servers})"
            typer.echo(f"captioner {ctx.invoked_subcommand}: {exc}{where}", err=True)
            raise typer.Exit(exit_code(exc)) from None


class ModelSizeChoice(StrEnum):
    tiny = "tiny"
    base = "base"


app = typer.Typer(
    cls=OperatorCommands, help="captioner: Kafka event-driven image captioning.", no_args_is_help=True
)
model_app = typer.Typer(help="Model directories.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
cache_app = typer.Typer(help="The caption cache.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(topics_app, name="topics")
app.add_typer(cache_app, name="cache")
app.add_typer(dlq_app, name="dlq")


@app.callback()
def check_settings() -> None:
    """captioner: Kafka event-driven image captioning."""
    try:
        refuse_unknown_variables()
    except UnknownSettingError as exc:
        typer.echo(f"captioner: {exc.message}", err=True)
        raise typer.Exit(2) from None
    for warning in deprecation_warnings():
        typer.echo(f"captioner: {warning}", err=True)


def _observe(service_name: str) -> None:
    """Logging and tracing of a long-running service, from CAPTIONER_LOG_* and CAPTIONER_TRACING."""
    from core.settings import TracingSettings
    from core.tracing import configure_tracing

    log_settings = load_settings(LogSettings)
    configure_logging(log_settings.level, log_settings.format)
    configure_tracing(load_settings(TracingSettings), service_name=service_name)


@contextmanager
def _topics_checked(command: str) -> Iterator[None]:
    """A process whose topics are missing (and that may not create them), hidden from its principal, or
    that cannot reach the cluster to look, ends with one line saying so, and exit status 3."""
    try:
        yield
    except (TopicsMissingError, TopicNotAuthorizedError, KafkaTimeoutError) as exc:
        typer.echo(f"captioner {command}: {exc.message}", err=True)
        raise typer.Exit(ExitCode.UNAVAILABLE) from None


@app.command("config")
def show_config() -> None:
    """Print the effective settings of every group as JSON, secrets masked."""
    import json

    from core.settings import effective_settings

    typer.echo(json.dumps(effective_settings(), indent=2))


@app.command()
def api() -> None:
    """Run the HTTP API (settings: CAPTIONER_API_*, KAFKA_BOOTSTRAP_SERVERS)."""
    _observe("captioner-api")
    from core.cache_signing import CacheKeyError
    from core.settings import ApiSettings, CacheSettings, ImageSettings, KafkaSettings, TopicSettings
    from producer_api.app import run_api

    try:
        with _topics_checked("api"):
            run_api(
                api=load_settings(ApiSettings),
                kafka=load_settings(KafkaSettings),
                topics=load_settings(TopicSettings),
                images=load_settings(ImageSettings),
                cache=load_settings(CacheSettings),
                codecs=_record_codecs(),
            )
    except CacheKeyError as exc:
        typer.echo(f"captioner api: {exc.message}", err=True)
        raise typer.Exit(2) from None


@app.command()
def worker() -> None:
    """Run one inference worker, or CAPTIONER_WORKER_PROCESSES of them (settings: CAPTIONER_MODEL,
    CAPTIONER_*)."""
    _observe("captioner-worker")
    settings, kafka = load_settings(WorkerSettings), load_settings(KafkaSettings)
    topics, images = load_settings(TopicSettings), load_settings(ImageSettings)
    try:  # everything the workers import, before any fork: forked workers share it
        import inference_consumer.worker  # noqa: F401
        from inference_consumer.processes import run_worker_processes
    except ImportError as exc:
        _needs_worker_extra(exc)
        raise
    serve = functools.partial(_serve_worker, kafka=kafka, topics=topics, images=images)
    if settings.worker_processes == 1:
        serve(settings)
        return
    raise typer.Exit(run_worker_processes(settings=settings, serve=serve, exit_status=_worker_exit_status))


def _serve_worker(
    settings: WorkerSettings, *, kafka: KafkaSettings, topics: TopicSettings, images: ImageSettings
) -> None:
    """One worker in this process; an error that ends it early ends it with one line on stderr and its
    exit status (typer.Exit)."""
    from core.cache_signing import CacheKeyError
    from core.settings import CacheSettings
    from inference_consumer.errors import ModelUnavailableError, WorkerFatalError
    from inference_consumer.worker import run_worker

    try:
        with _topics_checked("worker"):
            run_worker(
                settings=settings,
                kafka=kafka,
                topics=topics,
                images=images,
                cache=load_settings(CacheSettings),
                codecs=_record_codecs(),
            )
    except (ModelUnavailableError, CacheKeyError) as exc:
        typer.echo(f"captioner worker: {exc}", err=True)
        raise typer.Exit(2) from None
    except WorkerFatalError as exc:
        typer.echo(f"captioner worker stopped: {exc}", err=True)
        raise typer.Exit(3) from None
    except ImportError as exc:  # one the worker imports when it needs it (the model's libraries)
        _needs_worker_extra(exc)
        raise


def _worker_exit_status(error: BaseException) -> int:
    """The exit status of a forked worker that `error` ended: typer.Exit's own, else 1 (logged)."""
    if isinstance(error, typer.Exit):
        return error.exit_code
    logging.getLogger("captioner.worker").critical("the worker failed", exc_info=error)
    return 1


def _record_codecs() -> RecordCodecs:
    """Both framings with a schema registry (CAPTIONER_SCHEMA_REGISTRY_*), single-object alone without."""
    from core.schema_registry import record_codecs
    from core.settings import RegistrySettings

    return record_codecs(load_settings(RegistrySettings))


@model_app.command("make")
def model_make(
    size: Annotated[ModelSizeChoice, typer.Option(help="tiny (tests) or base (full GIT-base shape)")],
    out: Annotated[Path, typer.Option(help="directory to write")],
    seed: int = 0,
) -> None:
    """Write a random-weight GIT model directory that from_pretrained loads."""
    from captioner.model_factory import make_model

    make_model(size.value, out, seed=seed)
    typer.echo(str(out))


@cache_app.command("keygen")
def cache_keygen(
    out: Annotated[Path, typer.Option(help="directory for the pair (created; existing files are kept)")],
) -> None:
    """Make a caption-cache signing key pair: cache-signing.pem (private, mode 0600: give it to workers,
    CAPTIONER_CACHE_SIGNING_KEY_FILE) and cache-verify.pem (public: API instances,
    CAPTIONER_CACHE_VERIFY_KEYS_FILE; append it to their file to rotate keys)."""
    from core.cache_signing import CacheKeyError, write_key_pair

    try:
        private_path, public_path = write_key_pair(out)
    except CacheKeyError as exc:
        typer.echo(f"captioner cache keygen: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"captioner cache keygen: cannot write to {out}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"signing key (workers): {private_path}\nverify key (API instances): {public_path}")


@app.command("caption")
def caption_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="files and folders; - (or nothing, with a pipe) reads paths from stdin"),
    ] = None,
    via: Annotated[Via, typer.Option(help="http: the API; kafka: the request topic itself")] = Via.http,
    api_url: Annotated[str, typer.Option(help="the API (--via http)")] = "http://127.0.0.1:9000",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="default: stdout")] = None,
    output_format: Annotated[
        Format | None, typer.Option("--format", help="default: csv for a .csv output, else jsonl")
    ] = None,
    resume: Annotated[bool, typer.Option(help="append to --output, skip the paths already in it")] = False,
    recursive: Annotated[bool, typer.Option(help="walk folders' subfolders too")] = False,
    follow_symlinks: Annotated[
        bool, typer.Option(help="in folders, follow symlinks out of the folder and into subfolders")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="images in flight (default: 32 over http, 128 over kafka)")
    ] = None,
    timeout_s: Annotated[float, typer.Option(min=0.1, help="per image")] = 60.0,
    attempts: Annotated[int, typer.Option(min=1, help="tries per image on 429, 503, lost connections")] = 6,
    api_key: Annotated[
        str | None,
        typer.Option(help="the API key (--via http); default CAPTIONER_API_KEY, which keeps it out of `ps`"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log Kafka client details")] = False,
) -> None:
    """Caption images through the running service, writing one line per image (JSON lines or CSV) as
    each result arrives. Failed images are listed at the end; exits 1 if any failed."""
    from pydantic import SecretStr

    from captioner.bulk.command import caption
    from captioner.bulk.options import options_from
    from captioner.errors import UsageError
    from core.settings import ClientSettings, KafkaSettings, TopicSettings

    configure_tool_logging(verbose=verbose)
    key = SecretStr(api_key) if api_key is not None else load_settings(ClientSettings).api_key
    try:
        options = options_from(
            paths=paths or [],
            via=via,
            api_url=api_url,
            output=output,
            format=output_format,
            resume=resume,
            recursive=recursive,
            concurrency=concurrency,
            timeout_s=timeout_s,
            attempts=attempts,
            follow_symlinks=follow_symlinks,
            api_key=key,
        )
    except UsageError as exc:
        typer.echo(f"captioner caption: {exc}", err=True)
        raise typer.Exit(2) from None
    # Over HTTP the Kafka and registry settings play no part, so a bad one must not stop the command.
    topics = load_settings(TopicSettings)
    if via is Via.kafka:
        raise typer.Exit(
            caption(options, kafka=load_settings(KafkaSettings), topics=topics, codecs=_record_codecs())
        )
    raise typer.Exit(caption(options, kafka=None, topics=topics))


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic that is missing (idempotent)."""
    from core.settings import KafkaSettings, TopicSettings
    from core.topics import ensure_topics

    with _topics_checked("topics create"):
        created = ensure_topics(load_settings(KafkaSettings), load_settings(TopicSettings))
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


Principal = Annotated[str | None, typer.Option(help="User:<name>; left out, the role gets no ACLs")]


@topics_app.command("acls")
def topics_acls(
    api: Principal = None,
    worker: Principal = None,
    operator: Principal = None,
    publisher: Annotated[
        list[str] | None,
        typer.Option(help="an outside publisher, User:<name>=<its reply topic>; repeatable"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="print the ACLs, apply nothing")] = False,
) -> None:
    """Grant each role its least privilege as Kafka ACLs, for the topics of CAPTIONER_TOPIC_* and the groups
    of CAPTIONER_WORKER_GROUP_ID (docs/security.md). Run as a super user."""
    from captioner.acls import (
        Principals,
        Publisher,
        WorkerGroups,
        apply_grants,
        check_principal,
        grants,
        listing,
    )
    from core.settings import KafkaSettings, TopicSettings, WorkerSettings

    configure_tool_logging(verbose=False)
    try:
        principals = Principals(
            api=api and check_principal(api),
            worker=worker and check_principal(worker),
            operator=operator and check_principal(operator),
            publishers=tuple(Publisher.parse(text) for text in publisher or []),
        )
        workers = load_settings(WorkerSettings)
        found = grants(
            principals,
            load_settings(TopicSettings),
            WorkerGroups(requests=workers.worker_group_id, retries=workers.retry_group_id),
        )
        typer.echo(listing(found))
        if not dry_run:
            apply_grants(load_settings(KafkaSettings), found)
            typer.echo(f"applied {len(found)} ACLs")
    except OperatorError as exc:
        typer.echo(f"captioner topics acls: {exc.message}", err=True)
        raise typer.Exit(exit_code(exc)) from None


@topics_app.command("scram-user")
def topics_scram_user(
    name: Annotated[str, typer.Argument(help="the user, as in User:<name>")],
) -> None:
    """Create a SCRAM-SHA-512 user, or set its password, read from the first line of stdin (never an
    argument: those show in process listings). Run as a super user."""
    from captioner.acls import set_scram_passwords
    from core.settings import KafkaSettings

    configure_tool_logging(verbose=False)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        typer.echo("captioner topics scram-user: give the password on stdin", err=True)
        raise typer.Exit(ExitCode.USAGE)
    try:
        set_scram_passwords(load_settings(KafkaSettings), {name: password})
    except OperatorError as exc:
        typer.echo(f"captioner topics scram-user: {exc.message}", err=True)
        raise typer.Exit(exit_code(exc)) from None
    typer.echo(f"SCRAM-SHA-512 credential set for User:{name}")


def main() -> None:
    """A setting's bad value ends any command with one line naming the variable, and exit status 2."""
    try:
        app(prog_name="captioner")
    except InvalidSettingError as exc:
        print(f"captioner: {exc.message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
