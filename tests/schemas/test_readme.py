"""schemas/README.md is the contract outside publishers build against: it must name every error code a
reply or dead-letter record can carry and print the fingerprints the codec really writes."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.errors import CaptionerError
from schemas.registry import SCHEMA_DIR, versions
from tests.support.repo import REPO

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


SCHEMA_PATHS = sorted(SCHEMA_DIR.glob("v*/*.avsc"))


def canonical_form(path: Path) -> str:
    [schema] = [version for version in versions(path.stem) if version.path == path]
    return str(to_parsing_canonical_form(schema.parsed))


@pytest.mark.parametrize("path", SCHEMA_PATHS, ids=lambda path: path.stem)
def test_the_printed_canonical_forms_are_the_codecs(path: Path) -> None:
    form = canonical_form(path)
    [schema] = [version for version in versions(path.stem) if version.path == path]
    printed = f"`{path.parent.name}/{path.name}`:\n\n```json\n{form}\n```\n"

    assert printed in README, f"schemas/README.md should print the canonical form of {path.name}:\n{form}"
    assert bytes.fromhex(fingerprint(form, "CRC-64-AVRO")) == schema.fingerprint


def test_the_go_example_frames_with_the_printed_canonical_forms() -> None:
    go_client = (REPO / "examples" / "go" / "main.go").read_text()
    for name in ("caption_request", "caption_reply"):
        form = canonical_form(versions(name)[-1].path)
        assert f"`{form}`" in go_client, f"examples/go/main.go should frame with {name}'s canonical form"


def test_the_go_example_registers_our_request_schema_file() -> None:
    """Go cannot embed a file outside its module: examples/go holds a copy of the .avsc it registers."""
    copy = (REPO / "examples" / "go" / "caption_request.avsc").read_bytes()
    assert copy == versions("caption_request")[-1].path.read_bytes()


# What two Go libraries compute their fingerprints over instead of the canonical form (seen with
# hamba/avro v2.31.0's Schema.String and goavro v2.15.0's CanonicalSchema), and the byte order they write.
def _hamba_form(form: str) -> str:
    return form.replace('"type":"long"', '"type":{"type":"long","logicalType":"timestamp-millis"}')


def _goavro_form(form: str) -> str:
    doubled = re.sub(
        r'"name":"io\.captioner\.v1\.(Reply\w+)"', r'"name":"io.captioner.v1.io.captioner.v1.\1"', form
    )
    return doubled.replace('"type":"long"', '"type":{"type":"long"}')


NOT_CANONICAL = {  # a call named in the README's row -> (the form it fingerprints, big-endian bytes)
    "`FingerprintUsing(CRC64Avro)`": (_hamba_form, True),
    "`FingerprintUsing(CRC64AvroLE)`": (_hamba_form, False),
    "`Codec.SingleFromNative`": (_goavro_form, False),
}


@pytest.mark.parametrize("call", NOT_CANONICAL)
def test_the_warned_of_libraries_fingerprints_are_what_their_forms_give(call: str) -> None:
    [row] = [line for line in README.splitlines() if line.startswith("| ") and call in line]
    form_of, big_endian = NOT_CANONICAL[call]
    for name in ("caption_request", "caption_reply", "caption_cache_entry"):
        schema = versions(name)[-1]
        wrong = bytes.fromhex(fingerprint(form_of(canonical_form(schema.path)), "CRC-64-AVRO"))
        written = wrong[::-1] if big_endian else wrong
        assert written != schema.fingerprint
        assert f"`{written.hex(' ')}`" in row, f"{call} gives {name} the fingerprint {written.hex(' ')}"
