"""Fixtures the integration tests share."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.cache_signing import write_key_pair
from tests.support.cluster import TwoBrokers, two_brokers


@pytest.fixture
def cache_env(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The cache on, with a fresh key pair: the workers' environment and the API instances'."""
    private_path, public_path = write_key_pair(tmp_path / "cache-keys")
    on = {"CAPTIONER_CACHE_ENABLED": "true"}
    return (
        on | {"CAPTIONER_CACHE_SIGNING_KEY_FILE": str(private_path)},
        on | {"CAPTIONER_CACHE_VERIFY_KEYS_FILE": str(public_path)},
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[TwoBrokers]:
    """Two brokers of their own (tests/support/cluster.py): node 2 started by the test."""
    with two_brokers(tmp_path / "cluster") as brokers:
        yield brokers
