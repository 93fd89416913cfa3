"""`captioner worker` as the test and benchmark harness runs it: the same worker, whose model forces every
caption to at least HARNESS_MIN_NEW_TOKENS tokens (a batch then costs fixed work: `make bench`, `make
chaos`) and fails its first HARNESS_FAILING_BATCHES batches with a transient error (retry and dead-letter
drills). The service's settings are read as `captioner worker` reads them; these two are the harness's own,
outside the CAPTIONER_ prefix, so the service never knows them.

    python -m tests.support.harness_worker   (from the repository's root: processes.HARNESS_WORKER)
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.logs import configure_logging
from core.schema_registry import record_codecs
from core.settings import (
    CacheSettings,
    ImageSettings,
    KafkaSettings,
    LogSettings,
    RegistrySettings,
    TopicSettings,
    TracingSettings,
    WorkerSettings,
    load_settings,
    refuse_unknown_variables,
)
from core.tracing import configure_tracing
from inference_consumer.errors import InferenceError
from inference_consumer.model import CaptionModel, load_caption_model
from inference_consumer.processes import run_worker_processes
from inference_consumer.stages import StageSink
from inference_consumer.worker import run_worker


class HarnessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HARNESS_", frozen=True, extra="ignore")

    min_new_tokens: int = Field(default=0, ge=0, le=512, description="every caption at least this long")
    failing_batches: int = Field(default=0, ge=0, description="the first N batches fail, as retriable")


@dataclasses.dataclass
class HarnessModel(CaptionModel):
    """A loaded model with the harness's forced length and injected failures. Called by the worker's
    inference thread alone."""

    min_new_tokens: int = 0
    failures_left: int = 0

    @classmethod
    def around(cls, model: CaptionModel, harness: HarnessSettings) -> HarnessModel:
        loaded = {field.name: getattr(model, field.name) for field in dataclasses.fields(model)}
        return cls(**loaded, min_new_tokens=harness.min_new_tokens, failures_left=harness.failing_batches)

    def caption(
        self,
        pixel_values: list[torch.Tensor],
        *,
        max_new_tokens: list[int],
        min_new_tokens: int = 0,
        on_stage: StageSink | None = None,
    ) -> list[str]:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise InferenceError("harness: injected transient inference failure")
        forced = max(min_new_tokens, self.min_new_tokens)
        return super().caption(
            pixel_values, max_new_tokens=max_new_tokens, min_new_tokens=forced, on_stage=on_stage
        )


def main() -> None:
    refuse_unknown_variables()
    logs = load_settings(LogSettings)
    configure_logging(logs.level, logs.format)
    configure_tracing(load_settings(TracingSettings), service_name="captioner-worker")
    harness = load_settings(HarnessSettings)

    def load_model(settings: WorkerSettings) -> CaptionModel:
        return HarnessModel.around(load_caption_model(settings), harness)

    def serve(settings: WorkerSettings) -> None:
        run_worker(
            settings=settings,
            kafka=load_settings(KafkaSettings),
            topics=load_settings(TopicSettings),
            images=load_settings(ImageSettings),
            cache=load_settings(CacheSettings),
            codecs=record_codecs(load_settings(RegistrySettings)),
            load_model=load_model,
        )

    settings = load_settings(WorkerSettings)
    if settings.worker_processes == 1:
        serve(settings)
    else:
        sys.exit(run_worker_processes(settings=settings, serve=serve, exit_status=_logged))


def _logged(error: BaseException) -> int:
    logging.getLogger("harness").critical("the worker failed", exc_info=error)
    return 1


if __name__ == "__main__":
    main()
