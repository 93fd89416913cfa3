"""`captioner`: the operators' command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from captioner.dlq.commands import dlq_app
from core.logs import configure_logging
from core.settings import LogSettings, UnknownSettingError, refuse_unknown_variables

# What `pip install captioner[worker]` adds to the base install.
WORKER_EXTRA = frozenset({"torch", "transformers", "numpy"})


class ModelSizeChoice(StrEnum):
    tiny = "tiny"
    base = "base"


app = typer.Typer(help="captioner: Kafka event-driven image captioning.", no_args_is_help=True)
model_app = typer.Typer(help="Model directories.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")


@app.callback()
def check_settings() -> None:
    """captioner: Kafka event-driven image captioning."""
    try:
        refuse_unknown_variables()
    except UnknownSettingError as exc:
        typer.echo(f"captioner: {exc.message}", err=True)
        raise typer.Exit(2) from None


def _observe(service_name: str) -> None:
    """Logging and tracing of a long-running service, from CAPTIONER_LOG_* and CAPTIONER_TRACING."""
    from core.settings import TracingSettings
    from core.tracing import configure_tracing

    log_settings = LogSettings()
    configure_logging(log_settings.level, log_settings.format)
    configure_tracing(TracingSettings(), service_name=service_name)


@app.command("config")
def show_config() -> None:
    """Print the effective settings of every group as JSON, secrets masked."""
    import json

    from pydantic import ValidationError

    from core.settings import effective_settings

    try:
        effective = effective_settings()
    except ValidationError as exc:
        typer.echo(f"captioner config: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(effective, indent=2))


@app.command()
def api() -> None:
    """Run the HTTP API (settings: CAPTIONER_API_*, KAFKA_BOOTSTRAP_SERVERS)."""
    _observe("captioner-api")
    from core.settings import ApiSettings, ImageSettings, KafkaSettings, TopicSettings
    from producer_api.app import run_api

    run_api(api=ApiSettings(), kafka=KafkaSettings(), topics=TopicSettings(), images=ImageSettings())


@app.command()
def worker() -> None:
    """Run one inference worker (settings: CAPTIONER_MODEL, CAPTIONER_*)."""
    _observe("captioner-worker")
    from core.settings import ImageSettings, KafkaSettings, TopicSettings, WorkerSettings

    try:
        from inference_consumer.errors import ModelUnavailableError, WorkerFatalError
        from inference_consumer.worker import run_worker
    except ImportError as exc:
        if exc.name not in WORKER_EXTRA:
            raise
        typer.echo(f"captioner worker needs {exc.name}: pip install 'captioner[worker]'", err=True)
        raise typer.Exit(2) from None

    try:
        run_worker(
            settings=WorkerSettings(), kafka=KafkaSettings(), topics=TopicSettings(), images=ImageSettings()
        )
    except ModelUnavailableError as exc:
        typer.echo(f"captioner worker: {exc}", err=True)
        raise typer.Exit(2) from None
    except WorkerFatalError as exc:
        typer.echo(f"captioner worker stopped: {exc}", err=True)
        raise typer.Exit(3) from None


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


@app.command("caption-folder")
def caption_folder_command(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="folder of images")],
    api_url: Annotated[str, typer.Option(help="the API to send them to")] = "http://127.0.0.1:9000",
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 8,
    recursive: bool = False,
    timeout_s: Annotated[float, typer.Option(help="per image")] = 60.0,
    output: Annotated[Path | None, typer.Option(help="write JSON lines here instead of stdout")] = None,
) -> None:
    """Caption every image in FOLDER through the running pipeline; one JSON line per image.
    Exits 1 if any image failed."""
    import asyncio

    from captioner.folder import as_json_line, caption_folder, image_files

    paths = list(image_files(folder, recursive=recursive))
    if not paths:
        typer.echo(f"no images in {folder}", err=True)
        raise typer.Exit(2)
    results = asyncio.run(
        caption_folder(
            paths,
            api_url=api_url,
            concurrency=concurrency,
            timeout_s=timeout_s,
            show_progress=sys.stderr.isatty(),
        )
    )
    lines = "\n".join(as_json_line(result) for result in results) + "\n"
    if output:
        output.write_text(lines)
    else:
        typer.echo(lines, nl=False)
    failed = sum(result.status != 200 for result in results)
    typer.echo(f"{len(results) - failed} captioned, {failed} failed", err=True)
    if failed:
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic that is missing (idempotent)."""
    from core.settings import KafkaSettings, TopicSettings
    from core.topics import ensure_topics

    created = ensure_topics(KafkaSettings(), TopicSettings())
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


def main() -> None:
    app(prog_name="captioner")


if __name__ == "__main__":
    main()
