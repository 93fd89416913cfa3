"""schemas/README.md is the contract outside publishers build against: it must name every error code a
reply or dead-letter record can carry and print the fingerprints the codec really writes."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.errors import CaptionerError
from schemas.registry import SCHEMA_DIR, versions

README = (SCHEMA_DIR / "README.md").read_text()
# Where the errors a worker can put in a reply or a dead letter are defined.
WORKER_ERROR_MODULES = [
    "schemas.errors",
    "core.errors",
    "inference_consumer.errors",
    "inference_consumer.validation",
]


def _subclasses(cls: type[CaptionerError]) -> Iterator[type[CaptionerError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def worker_error_codes() -> set[str]:
    for module in WORKER_ERROR_MODULES:
        importlib.import_module(module)
    defined = {
        error.code for error in _subclasses(CaptionerError) if error.__module__ in WORKER_ERROR_MODULES
    }
    return defined | {CaptionerError.code}


def test_every_error_code_is_documented() -> None:
    codes = worker_error_codes()
    assert len(codes) > 10  # the walk found the families
    missing = sorted(code for code in codes if f"| `{code}` |" not in README)
    assert not missing, f"add these to schemas/README.md's error codes: {missing}"


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("v*/*.avsc")), ids=lambda path: path.stem)
def test_the_printed_fingerprints_are_the_registrys(path: Path) -> None:
    [schema] = [version for version in versions(path.stem) if version.path == path]
    as_number = int.from_bytes(schema.fingerprint, "little")
    row = f"| `v{schema.version}/{schema.name}.avsc` | `{schema.fingerprint.hex(' ')}` | `0x{as_number:016x}`"
    assert row in README, f"schemas/README.md should print {row}"
