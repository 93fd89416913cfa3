"""The README's settings table is the operators' reference: it must name every setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from core.settings import (
    ApiSettings,
    CacheSettings,
    ImageSettings,
    KafkaSettings,
    LogSettings,
    RegistrySettings,
    TopicSettings,
    TracingSettings,
    WorkerSettings,
)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize(
    "settings",
    [
        KafkaSettings,
        TopicSettings,
        ApiSettings,
        WorkerSettings,
        ImageSettings,
        LogSettings,
        TracingSettings,
        CacheSettings,
        RegistrySettings,
    ],
)
def test_every_setting_is_documented(settings: type[BaseSettings]) -> None:
    prefix = settings.model_config.get("env_prefix", "")
    names = [
        field.validation_alias if isinstance(field.validation_alias, str) else (prefix + name).upper()
        for name, field in settings.model_fields.items()
    ]
    missing = [name for name in names if f"`{name}`" not in README]
    assert not missing, f"add these to the README's settings table: {missing}"
