"""Kafka header names the service writes on retry and dead-letter records: part of the public contract.

Record values are never rewritten on the way through retry tiers and the dead-letter topic; everything
the service learns about a record travels in these headers (UTF-8 text values).
"""

from __future__ import annotations

ATTEMPT = "captioner.attempt"  # 1 for the first run; retry tier N carries N + 1
RETRY_DUE_MS = "captioner.retry.due-ms"  # epoch ms before which a retry record is not run
RETRY_ERROR_CLASS = "captioner.retry.error.class"
RETRY_ERROR_MESSAGE = "captioner.retry.error.message"

ORIGINAL_TOPIC = "captioner.original.topic"
ORIGINAL_PARTITION = "captioner.original.partition"
ORIGINAL_OFFSET = "captioner.original.offset"
ORIGINAL_TIMESTAMP_MS = "captioner.original.timestamp-ms"

DLQ_ERROR_CLASS = "captioner.dlq.error.class"
DLQ_ERROR_CODE = "captioner.dlq.error.code"
DLQ_ERROR_MESSAGE = "captioner.dlq.error.message"
DLQ_ERROR_STACK = "captioner.dlq.error.stack"  # the last 4000 characters of the traceback
DLQ_CONSUMER_GROUP = "captioner.dlq.consumer.group"
DLQ_WORKER_ID = "captioner.dlq.worker.id"
DLQ_FAILED_AT_MS = "captioner.dlq.failed-at-ms"

# Set by `captioner dlq replay`: the job runs even though its deadline has passed, because its
# original caller has gone and the result is wanted on the reply topic.
REPLAYED_FROM = "captioner.replayed-from"  # "<dlq topic>:<partition>:<offset>"

# W3C Trace Context (https://www.w3.org/TR/trace-context/), the same two fields as the HTTP headers of
# that name, lower case, ASCII text. The API writes them on each request record; a system that publishes
# jobs itself may too. Workers continue the trace they name (a malformed or oversized value is ignored
# and the job starts a new trace), put it on replies, and carry both unchanged through retry tiers, the
# dead-letter topic and `dlq replay`.
TRACEPARENT = "traceparent"  # 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>
TRACESTATE = "tracestate"  # vendor entries; at most 512 bytes are read

# Caption-cache records (docs/caption-cache.md). A worker signs each entry it writes (Ed25519 over the
# record's key and value, core/cache_signing.py): the signature as 128 hex digits, and which key made it
# (16 hex digits of the SHA-256 of its raw public key). API instances serve only entries whose signature
# one of their verify keys accepts.
CACHE_SIGNATURE = "captioner.signature"
CACHE_SIGNATURE_KEY_ID = "captioner.signature.key-id"
# On a request record: the caption-cache scope the job's title is filed under (32 lowercase hex digits,
# a one-way hash of the caller's API key; CAPTIONER_CACHE_SCOPE=per_key). Absent: the shared scope. A
# worker writes no cache entry for a job whose scope header is malformed.
CACHE_SCOPE = "captioner.cache-scope"
