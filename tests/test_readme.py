"""The README's settings table is the operators' reference: it must name every setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from captioner.acls import Principals, Publisher, WorkerGroups, grants, markdown_table
from core.settings import (
    ApiSettings,
    CacheSettings,
    ClientSettings,
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
        ClientSettings,
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


def test_the_acl_table_is_what_captioner_topics_acls_applies() -> None:
    """README, "Who may write where": the default names, the principals it names."""
    workers = WorkerSettings.model_construct()
    found = grants(
        Principals(
            api="User:api",
            worker="User:worker",
            operator="User:operator",
            publishers=(Publisher("User:partner", "partner.replies"),),
        ),
        TopicSettings.model_construct(),
        WorkerGroups(requests=workers.worker_group_id, retries=workers.retry_group_id),
    )
    table = markdown_table(found)

    assert table in README, f"replace the table under **Who may write where.** with:\n{table}"
