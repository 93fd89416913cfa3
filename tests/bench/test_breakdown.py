from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench.breakdown import BreakdownProbe, cpu_seconds, scrape_worker, thread_usage


def _metrics_file(path: Path, seconds: dict[str, float], batches: tuple[int, ...] = ()) -> str:
    """A worker's /metrics as a file: its stage seconds, and one batch-size observation per batch."""
    registry = CollectorRegistry()
    counter = Counter("captioner_worker_stage_seconds", "stages", ["stage"], registry=registry)
    for stage, value in seconds.items():
        counter.labels(stage=stage).inc(value)
    sizes = Histogram("captioner_worker_batch_size", "batches", buckets=(1, 16, 64), registry=registry)
    for size in batches:
        sizes.observe(size)
    path.write_bytes(generate_latest(registry))
    return path.as_uri()


def test_stage_seconds_and_batches_are_read_from_the_workers_metrics(tmp_path: Path) -> None:
    url = _metrics_file(tmp_path / "metrics", {"decoding_steps": 2.5, "publish": 0.25}, batches=(16, 8))

    counters = scrape_worker(url)

    assert counters.stages == {"decoding_steps": 2.5, "publish": 0.25}
    assert (counters.batches, counters.batched_images) == (2, 24)


def test_the_probe_takes_the_difference_over_its_window(tmp_path: Path) -> None:
    path = tmp_path / "metrics"
    url = _metrics_file(path, {"decoding_steps": 1.0}, batches=(2,))
    probe = BreakdownProbe(metrics_urls=[url], pids={"worker": [os.getpid()]})
    probe.start()
    _metrics_file(path, {"decoding_steps": 4.0, "image_encoder": 0.5}, batches=(2, 16, 12, 17))
    sum(range(200_000))  # some CPU time in this process

    breakdown = probe.finish(answered=10, client_cpu_s=0.2)

    assert breakdown.stage_s == {"decoding_steps": 3.0, "image_encoder": 0.5}
    assert breakdown.cpu_s["worker"] >= 0 and breakdown.cpu_s["client"] == 0.2
    assert breakdown.ms_per_img("decoding_steps") == 300.0
    assert breakdown.mean_batch() == 15.0  # the window's three batches, not the one before it


def test_the_window_ends_when_the_probe_is_stopped_not_when_it_is_finished(tmp_path: Path) -> None:
    path = tmp_path / "metrics"
    url = _metrics_file(path, {"decoding_steps": 1.0}, batches=(2,))
    probe = BreakdownProbe(metrics_urls=[url], pids={"worker": [os.getpid()]})
    probe.start()
    _metrics_file(path, {"decoding_steps": 2.0}, batches=(2, 16))
    probe.stop()
    stopped = time.perf_counter()
    _metrics_file(path, {"decoding_steps": 9.0}, batches=(2, 16, 4))  # the drain, after the window

    breakdown = probe.finish(answered=1, client_cpu_s=0.0)

    assert breakdown.stage_s == {"decoding_steps": 1.0}
    assert breakdown.mean_batch() == 16.0
    assert 0 <= breakdown.wall_s <= stopped - probe._started


def test_a_process_that_is_gone_has_no_cpu_time() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert math.isnan(cpu_seconds(2**22 + 12345))


def test_a_thread_s_cpu_and_switches_are_its_own() -> None:
    """The main thread's figures, not the process's: a busy second thread adds nothing to them."""
    before, process_before = thread_usage(os.getpid()), cpu_seconds(os.getpid())
    done = threading.Event()
    busy = threading.Thread(target=lambda: (sum(range(3_000_000)), done.set()))
    busy.start()
    done.wait(timeout=60)  # a wait: at least one context switch of this thread
    busy.join()
    after, process_after = thread_usage(os.getpid()), cpu_seconds(os.getpid())

    assert after.switches > before.switches
    assert 0 <= after.cpu_s - before.cpu_s < process_after - process_before
    gone = thread_usage(os.getpid(), 2**22 + 12345)
    assert math.isnan(gone.cpu_s) and gone.switches == 0


def test_a_worker_whose_metrics_cannot_be_read_leaves_the_stages_out_not_the_run(tmp_path: Path) -> None:
    readable = _metrics_file(tmp_path / "metrics", {"decoding_steps": 1.0})
    probe = BreakdownProbe(metrics_urls=[readable, (tmp_path / "gone").as_uri()], pids={"api": [os.getpid()]})
    probe.start()

    breakdown = probe.finish(answered=10, client_cpu_s=0.1)

    assert breakdown.workers == 0 and breakdown.stage_s == {}
    assert math.isnan(breakdown.ms_per_img("decoding_steps")) and math.isnan(breakdown.wall_share("other"))
    assert math.isnan(breakdown.mean_batch())
    assert breakdown.cpu_s["api"] >= 0  # the CPU figures stay
