"""Loads the .avsc files and indexes them by CRC-64-AVRO fingerprint."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    # fastavro's parsed form, marked as parsed: schemaless_reader and schemaless_writer re-parse any
    # schema that lacks the mark, on every record.
    parsed: dict[str, Any]
    fingerprint: bytes  # 8 bytes, little-endian, as written after C3 01

    @property
    def path(self) -> Path:
        return SCHEMA_DIR / f"v{self.version}" / f"{self.name}.avsc"

    def json_text(self) -> str:
        """The .avsc file as compact JSON: what a schema registry is given (its defaults and logical types
        included, which the parsing canonical form drops)."""
        return json.dumps(json.loads(self.path.read_text()), separators=(",", ":"))


def _load(path: Path, name: str, version: int) -> SchemaVersion:
    raw = json.loads(path.read_text())
    parsed: dict[str, Any] = parse_schema(raw)  # type: ignore[assignment]
    canonical = to_parsing_canonical_form(parsed)
    # fastavro renders the CRC-64-AVRO fingerprint as its little-endian bytes, the order the spec writes.
    crc = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return SchemaVersion(name=name, version=version, parsed=parsed, fingerprint=crc)


@cache
def versions(name: str) -> tuple[SchemaVersion, ...]:
    """All versions of one record type, oldest first."""
    found = []
    for directory in SCHEMA_DIR.iterdir():
        match = re.fullmatch(r"v(\d+)", directory.name)
        path = directory / f"{name}.avsc"
        if match and path.is_file():
            found.append(_load(path, name, int(match.group(1))))
    if not found:
        raise LookupError(f"no schema named {name} under {SCHEMA_DIR}")
    return tuple(sorted(found, key=lambda schema: schema.version))
