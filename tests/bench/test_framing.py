"""bench.framing against a real registry: every operation measured in both framings, and the registry's
records really are in its framing (so the figures compare what they say they do)."""

from __future__ import annotations

import pytest

from bench.framing import measure, operations, report
from core.schema_registry import record_codecs
from core.settings import RegistrySettings
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration


def test_each_operation_is_measured_in_both_framings_without_registry_requests(
    schema_registry: LocalRegistry,
) -> None:
    codecs = record_codecs(RegistrySettings(url=schema_registry.url))
    assert codecs.client is not None
    found = operations(codecs)
    before = codecs.client.requests
    figures = [measure(operation, records=3, rounds=1) for operation in found]
    assert codecs.client.requests == before  # the steady state: timing makes no registry request
    assert [figure.name for figure in figures] == [operation.name for operation in found]
    assert all(figure.single_object_us > 0 and figure.registry_us > 0 for figure in figures)
    assert len(report(found, records=1, rounds=1).splitlines()) == len(found) + 1
