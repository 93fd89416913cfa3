"""Output of the dlq commands: aligned plain text for people and `grep`, or JSON (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from captioner.dlq.overview import Overview
from captioner.dlq.records import DeadLetter, Origin, ms_to_datetime
from captioner.dlq.replay import ReplaySummary
from core.text import escaped, escaped_keeping_lines
from schemas import CaptionRequest

SHOWN_BYTES = 8192  # of one header value or key: the worker's stack header is 4000 characters
SHOWN_NAME = 256  # characters of a header name


def shown(value: bytes, limit: int = SHOWN_BYTES) -> str:
    """Bytes from a record as text, cut to `limit` bytes with a note of the full size."""
    text = value[:limit].decode("utf-8", "backslashreplace")
    return text if len(value) <= limit else f"{text}... ({len(value)} bytes in all)"


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def iso(epoch_ms: int | None) -> str | None:
    return ms_to_datetime(epoch_ms).isoformat(timespec="milliseconds") if epoch_ms is not None else None


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header), *([("-" if c is None else escaped(str(c))) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


# list


def overview_text(overview: Overview) -> str:
    head = f"{overview.topic}: {overview.total} dead letters ({overview.selection})"
    if not overview.total:
        return head
    by_error = table(
        ["ERROR CLASS", "CODE", "COUNT", "FIRST FAILED", "LAST FAILED"],
        [
            [e.error_class, e.error_code, e.count, iso(e.first_failed_ms), iso(e.last_failed_ms)]
            for e in overview.by_error
        ],
    )
    by_time = table(
        [f"FAILED ({overview.bucket.value})", "ERROR CLASS", "COUNT"],
        [[overview.bucket.label(t.bucket_start_ms), t.error_class, t.count] for t in overview.by_time],
    )
    by_partition = table(
        ["PARTITION", "COUNT", "FIRST OFFSET", "LAST OFFSET"],
        [[p.partition, p.count, p.first_offset, p.last_offset] for p in overview.by_partition],
    )
    return "\n\n".join([head, by_error, by_time, by_partition])


def overview_json(overview: Overview) -> dict[str, Any]:
    data = asdict(overview)
    for entry in data["by_error"]:
        entry["first_failed_at"] = iso(entry["first_failed_ms"])
        entry["last_failed_at"] = iso(entry["last_failed_ms"])
    for entry in data["by_time"]:
        entry["bucket_start"] = iso(entry["bucket_start_ms"])
    return data


# show


def request_json(request: CaptionRequest) -> dict[str, Any]:
    return {
        "correlation_id": request.correlation_id,
        "reply_topic": request.reply_topic,
        "reply_partition": request.reply_partition,
        "content_type": request.content_type,
        "image_bytes": len(request.image),
        "created_at": request.created_at.isoformat(),
        "deadline": request.deadline.isoformat(),
        "max_new_tokens": request.max_new_tokens,
    }


def origin_json(origin: Origin) -> dict[str, Any]:
    return asdict(origin) | {"timestamp": iso(origin.timestamp_ms)}


def dead_letter_json(record: DeadLetter) -> dict[str, Any]:
    """Header values and the key are cut to SHOWN_BYTES: they are whatever a producer wrote."""
    request, origin = record.request, record.origin
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": iso(record.timestamp_ms),
        "key": shown(record.key) if record.key is not None else None,
        "value_bytes": len(record.value),
        "error_class": record.error_class,
        "error_code": record.error_code,
        "failed_at": iso(record.failed_at_ms),
        "origin": origin_json(origin) if origin is not None else None,
        "request": request_json(request) if request is not None else None,
        "decode_error": record.decode_error,
        "headers": {name[:SHOWN_NAME]: shown(value) for name, value in record.headers},
        "headers_unreadable": record.headers_unreadable,
    }


def dead_letter_text(record: DeadLetter) -> str:
    data = dead_letter_json(record)
    origin = data["origin"]
    lines = [
        f"record      {record.topic}[{record.partition}]@{record.offset}  ({data['timestamp']})",
        f"key         {data['key']}",
        f"value       {data['value_bytes']} bytes",
        f"error       {record.error_class} ({record.error_code}) at {data['failed_at']}",
        "origin      "
        + (
            f"{origin['topic']}[{origin['partition']}]@{origin['offset']}  ({origin['timestamp']})"
            if origin is not None
            else "unknown (original.* headers missing or malformed)"
        ),
    ]
    if data["request"] is None:
        lines.append(f"request     not a readable CaptionRequest: {record.decode_error}")
    else:
        lines += _request_lines(data["request"])
    lines.append("headers" + ("     unreadable (a name is not UTF-8)" if record.headers_unreadable else ""))
    lines += [_header_line(name, value) for name, value in data["headers"].items()]
    return escaped_keeping_lines("\n".join(lines))


def _request_lines(request: dict[str, Any]) -> list[str]:
    deadline = datetime.fromisoformat(request["deadline"])
    passed = " (passed)" if deadline <= datetime.now(UTC) else ""
    partition = request["reply_partition"]
    return [
        f"request     correlation id  {request['correlation_id']}",
        f"            reply topic     {request['reply_topic']}"
        + (f" partition {partition}" if partition is not None else ""),
        f"            content type    {request['content_type']}",
        f"            image           {request['image_bytes']} bytes",
        f"            created at      {request['created_at']}",
        f"            deadline        {request['deadline']}{passed}",
        f"            max new tokens  {request['max_new_tokens'] or 'worker default'}",
    ]


def _header_line(name: str, value: str) -> str:
    if "\n" not in value:
        return f"  {name}: {value}"
    indented = "\n".join(f"    {line}" for line in value.rstrip("\n").splitlines())
    return f"  {name}:\n{indented}"


# replay

DRY_RUN_NOTE = " (dry run: nothing published or committed)"


def replay_text(summary: ReplaySummary) -> str:
    counts = summary.counts
    verb = f"would replay {counts.would_replay}" if summary.dry_run else f"replayed {counts.replayed}"
    lines = [
        f"{verb} of the dead letters in {summary.topic} selected by: {summary.selection}",
        f"  scanned {counts.scanned}, not selected {counts.not_selected}, "
        f"already replayed {counts.already_replayed}, failed {counts.failed}, "
        f"held back {counts.held_back}, unconfirmed {counts.unconfirmed}",
        f"  progress group: {summary.group}{DRY_RUN_NOTE if summary.dry_run else ''}",
    ]
    if summary.to is not None:
        lines.append(f"  every record to: {summary.to} (--to)")
    lines += [f"  {p.position} -> {p.target}  {p.error_class}  {p.correlation_id}" for p in summary.planned]
    if summary.interrupted:
        lines.append("  interrupted: acknowledged records are committed; run again to continue")
    lines += [f"  error: {error}" for error in summary.errors]
    return escaped_keeping_lines("\n".join(lines))
