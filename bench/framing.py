"""CPU cost per record of the Schema Registry's framing against single-object encoding, side by side in one
run: the API encoding a request and decoding a reply, a worker decoding a request and encoding a reply.

    python -m bench.framing [--records N] [--rounds R]

The registry is CAPTIONER_SCHEMA_REGISTRY_URL when set, else a local one (infra/registry/registry.sh, on
REGISTRY_LOCAL_PORT), stopped at the end. Schemas are registered and looked up before timing starts, so
the figures are the steady state: no registry request is made while timing. Each figure is the median over
rounds of process CPU time per record; the two framings alternate round by round, so a loaded machine
slows both alike and their ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from core.schema_registry import record_codecs
from core.settings import RegistrySettings, load_settings
from schemas import CaptionReply, CaptionRequest, ReplyStatus
from schemas.framing import SINGLE_OBJECT_CODECS, RecordCodecs

REPO = Path(__file__).resolve().parents[1]
REGISTRY_SH = REPO / "infra" / "registry" / "registry.sh"
REQUEST_TOPIC = "bench.framing.requests"
REPLY_TOPIC = "bench.framing.replies"
IMAGE_SIZES = (4 * 1024, 200 * 1024)


@dataclass(frozen=True)
class Operation:
    name: str
    single_object: Callable[[], object]
    registry: Callable[[], object]


@dataclass(frozen=True)
class Figure:
    name: str
    single_object_us: float
    registry_us: float

    @property
    def ratio(self) -> float:
        return self.registry_us / self.single_object_us

    def line(self) -> str:
        return f"{self.name:<38} {self.single_object_us:>10.1f} {self.registry_us:>10.1f} {self.ratio:>7.2f}"


def operations(registry: RecordCodecs) -> list[Operation]:
    single = SINGLE_OBJECT_CODECS
    registry.requests.prepare(REQUEST_TOPIC)
    registry.replies.prepare(REPLY_TOPIC)
    reply = CaptionReply(
        correlation_id="c" * 32,
        status=ReplyStatus.SUCCEEDED,
        model="microsoft/git-base-textcaps",
        worker_id="worker-1",
        title="a cat sitting on a wooden table next to a window",
        inference_ms=812.5,
    )
    found: list[Operation] = []
    for size in IMAGE_SIZES:
        request = _request(size)
        plain = single.requests.encode(request, topic=REQUEST_TOPIC)
        framed = registry.requests.encode(request, topic=REQUEST_TOPIC)
        registry.requests.decode(framed)  # the writer schema's id, looked up once before timing
        label = f"{size // 1024} KB image"
        found += [
            Operation(
                f"API: encode request ({label})",
                partial(single.requests.encode, request, topic=REQUEST_TOPIC),
                partial(registry.requests.encode, request, topic=REQUEST_TOPIC),
            ),
            Operation(
                f"worker: decode request ({label})",
                partial(single.requests.decode_framed, plain),
                partial(registry.requests.decode_framed, framed),
            ),
        ]
    plain_reply = single.replies.encode(reply, topic=REPLY_TOPIC)
    framed_reply = registry.replies.encode(reply, topic=REPLY_TOPIC)
    registry.replies.decode(framed_reply)  # the writer schema's id, looked up once before timing
    return [
        *found,
        Operation(
            "worker: encode reply",
            lambda: single.replies.encode(reply, topic=REPLY_TOPIC),
            lambda: registry.replies.encode(reply, topic=REPLY_TOPIC, framing=registry.framing),
        ),
        Operation(
            "API: decode reply",
            lambda: single.replies.decode(plain_reply),
            lambda: registry.replies.decode(framed_reply),
        ),
    ]


def measure(operation: Operation, *, records: int, rounds: int) -> Figure:
    samples: dict[str, list[float]] = {"single": [], "registry": []}
    for _ in range(rounds):
        for label, call in (("single", operation.single_object), ("registry", operation.registry)):
            started = time.process_time()
            for _ in range(records):
                call()
            samples[label].append((time.process_time() - started) / records * 1e6)
    single, registry = (statistics.median(samples[label]) for label in ("single", "registry"))
    return Figure(operation.name, single, registry)


def _request(image_bytes: int) -> CaptionRequest:
    now = datetime.now(UTC)
    return CaptionRequest(
        correlation_id="c" * 32,
        image=os.urandom(image_bytes),
        content_type="image/jpeg",
        reply_topic="captioner.replies",
        reply_partition=3,
        deadline=now + timedelta(seconds=30),
        created_at=now,
    )


@contextmanager
def registry_url(settings: RegistrySettings) -> Iterator[str]:
    if settings.url is not None:
        yield settings.url
        return
    with tempfile.TemporaryDirectory(prefix="captioner-bench-registry-") as state:
        env = os.environ | {"REGISTRY_LOCAL_STATE": state}
        started = subprocess.run(
            [REGISTRY_SH, "start"], env=env, capture_output=True, text=True, check=False, timeout=300
        )
        if started.returncode != 0:
            raise RuntimeError(f"registry.sh start failed:\n{started.stderr}")
        try:
            yield started.stdout.strip().splitlines()[-1]
        finally:
            subprocess.run([REGISTRY_SH, "stop"], env=env, check=False, timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=2000, help="records per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        settings = load_settings(RegistrySettings)
        url = stack.enter_context(registry_url(settings))
        codecs = record_codecs(settings.model_copy(update={"url": url}))
        stack.callback(codecs.close)
        print(report(operations(codecs), records=args.records, rounds=args.rounds))


def report(found: list[Operation], **counts: Any) -> str:
    header = f"{'CPU µs per record':<38} {'single-obj':>10} {'registry':>10} {'ratio':>7}"
    return "\n".join([header, *(measure(operation, **counts).line() for operation in found)])


if __name__ == "__main__":
    main()
