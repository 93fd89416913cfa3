"""The tables of docs/ that mirror the code are the operators' reference: the settings table must name
every setting with its default, the API's error table every code with its status, the ACL table what
`captioner topics acls` applies; and the README's links must lead somewhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from markdown.extensions.toc import slugify
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

import producer_api.errors
from captioner.acls import Principals, Publisher, WorkerGroups, grants, markdown_table
from core import errors as core_errors
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
from producer_api.docs import openapi_document
from producer_api.serving import plain_error
from schemas.errors import CaptionerError
from tests.support.repo import REPO

DOCS = REPO / "docs"
SETTINGS_GROUPS: list[type[BaseSettings]] = [
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
]
# A cell that is one code span states a literal default; anything else (—, prose) says there is none.
LITERAL = re.compile(r"^`([^`]+)`$")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(([^()\s]+)\)")


def table_rows(page: Path, heading: str) -> list[list[str]]:
    """The cells of each body row of the first table under `heading` (a Markdown heading's text)."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(heading)}", line))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if re.fullmatch(r"\|[-| ]+\|", line):
            continue
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif rows:
            break
    return rows[1:]  # less the header


def env_names(field_name: str, field: FieldInfo, prefix: str) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, str):
        return [alias]
    if alias is not None:
        return [str(choice) for choice in alias.choices]  # type: ignore[union-attr]
    return [(prefix + field_name).upper()]


def settings_fields() -> Iterator[tuple[list[str], FieldInfo]]:
    for group in SETTINGS_GROUPS:
        prefix = group.model_config.get("env_prefix", "")
        for name, field in group.model_fields.items():
            yield env_names(name, field, prefix), field


def written_as(default: Any) -> str:
    """A default as the table writes it: the environment's spelling."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple | list):
        return "[" + ", ".join(written_as(item) for item in default) + "]"
    return str(default)


SETTINGS_TABLE = {row[0].strip("`"): row[1] for row in table_rows(DOCS / "settings.md", "Settings")}


def test_every_setting_has_one_row_and_every_row_is_a_setting() -> None:
    names = [names for names, _field in settings_fields()]
    missing = [group[0] for group in names if not any(name in SETTINGS_TABLE for name in group)]
    known = {name for group in names for name in group}
    unknown = [name for name in SETTINGS_TABLE if name not in known]

    assert len(SETTINGS_TABLE) > 50  # the table was found
    assert not missing, f"add these to the table in docs/settings.md: {missing}"
    assert not unknown, f"these rows of docs/settings.md are no setting: {unknown}"


@pytest.mark.parametrize("group", SETTINGS_GROUPS, ids=lambda group: group.__name__)
def test_each_default_in_the_settings_table_is_the_codes(group: type[BaseSettings]) -> None:
    prefix = group.model_config.get("env_prefix", "")
    wrong = {}
    for name, field in group.model_fields.items():
        row_name = next(env for env in env_names(name, field, prefix) if env in SETTINGS_TABLE)
        cell = SETTINGS_TABLE[row_name]
        literal = LITERAL.match(cell)
        has_literal = field.default not in (None, PydanticUndefined) and field.default_factory is None
        if has_literal:
            if literal is None or literal.group(1) != written_as(field.default):
                wrong[row_name] = (cell, f"`{written_as(field.default)}`")
        elif literal is not None:
            wrong[row_name] = (cell, "no literal default (—, or words saying what is used)")

    assert not wrong, f"docs/settings.md's defaults, as (written, in the code): {wrong}"


def api_error_statuses() -> dict[str, int]:
    """Every code the API's error family answers with, and its status; aiohttp's own 404 and 405 in the
    words the API puts them."""
    found = {CaptionerError.code: CaptionerError.http_status}
    for module in (producer_api.errors, core_errors):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, CaptionerError):
                assert found.get(value.code, value.http_status) == value.http_status, value
                found[value.code] = value.http_status
    for status in (HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED):
        body = json.loads(plain_error(status).body)  # type: ignore[arg-type]
        found[body["error"]["code"]] = status
    return found


def test_the_api_error_table_gives_each_code_its_status() -> None:
    table = {row[0].strip("`"): int(row[1]) for row in table_rows(DOCS / "api.md", "Errors")}
    documented = set(openapi_document()["components"]["schemas"]["ErrorCode"]["enum"])
    statuses = api_error_statuses()

    assert set(table) == set(statuses) == documented
    assert table == statuses


def test_the_acl_table_is_what_captioner_topics_acls_applies() -> None:
    """docs/security.md, "Who may write where": the default names, the principals it names."""
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

    page = (DOCS / "security.md").read_text()
    assert table in page, f"replace the table under Who may write where with:\n{table}"


def headings(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slugify(match, "-") for match in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readmes_links_lead_to_files_and_headings_that_exist() -> None:
    broken = []
    for target in LINK.findall((REPO / "README.md").read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        page = REPO / path if path else REPO / "README.md"
        if not page.exists() or (anchor and anchor not in headings(page)):
            broken.append(target)

    assert not broken, f"README.md links to what does not exist: {broken}"
