"""Where the time goes at saturation: each worker's stage sums (its captioner_worker_stage_seconds_total
counter, inference_consumer/stages.py) and batch sizes (captioner_worker_batch_size), and the CPU time of
every process of the run (/proc/PID/stat), all taken as the closed loop's measured window opens and as it
closes (bench/load.py), and divided by the images answered in it."""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ASSIGNED_METRIC = "captioner_worker_assigned_partitions"
STAGE_METRIC = "captioner_worker_stage_seconds"
BATCH_METRIC = "captioner_worker_batch_size"
# The inference thread's stages, in the order a batch goes through them (inference_consumer/stages.py);
# the loop's own bookkeeping is what they leave of the window.
THREAD_STAGES = (
    "wait_for_jobs",
    "wait_for_pixels",
    "staging",
    "image_encoder",
    "prefill",
    "decoding_steps",
    "generate",
    "detokenize",
    "publish",
)
OTHER = "other"
POOL_STAGES = ("image_decode", "preprocess")  # the decode pool's threads, beside the inference thread
CPU_ROLES = ("worker", "api", "broker", "client")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads; NaN once it is gone."""
    try:
        return _cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return math.nan


def _cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc stat line."""
    # The command name is in parentheses and may hold spaces: the fields after it are what counts.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadUsage:
    """One thread's CPU seconds (user + system) and context switches (voluntary + involuntary)."""

    cpu_s: float
    switches: int


def thread_usage(pid: int, tid: int | None = None) -> ThreadUsage:
    """Of thread `tid` of process `pid` (its main thread by default: an asyncio server's event loop);
    NaN CPU and no switches once it is gone."""
    task = Path(f"/proc/{pid}/task/{pid if tid is None else tid}")
    try:
        stat, status = (task / "stat").read_text(), (task / "status").read_text()
    except OSError:
        return ThreadUsage(cpu_s=math.nan, switches=0)
    switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)
    return ThreadUsage(cpu_s=_cpu_seconds(stat), switches=switches)


def request_partitions_held(url: str, requests_topic: str, *, timeout_s: float = 5.0) -> bool:
    """Whether the worker serving /metrics at `url` holds partitions of the request topic (False while it
    does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return False
    return any(
        sample.value > 0
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == ASSIGNED_METRIC and sample.labels.get("topic") == requests_topic
    )


@dataclass(frozen=True)
class WorkerCounters:
    """What a worker's /metrics has counted since it started."""

    stages: dict[str, float]  # stage -> seconds
    batches: float = 0.0  # batches run
    batched_images: float = 0.0  # the images in them


def scrape_worker(url: str, *, timeout_s: float = 5.0) -> WorkerCounters:
    """The worker's stage seconds by stage and its batches, from its /metrics."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    stages: dict[str, float] = {}
    batch_totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == STAGE_METRIC and sample.name.endswith("_total"):
                stages[sample.labels["stage"]] = float(sample.value)
            elif family.name == BATCH_METRIC and sample.name.endswith(("_count", "_sum")):
                batch_totals[sample.name.rsplit("_", 1)[1]] = float(sample.value)
    return WorkerCounters(
        stages=stages, batches=batch_totals.get("count", 0.0), batched_images=batch_totals.get("sum", 0.0)
    )


def broker_pid(broker_sh: Path, env: Mapping[str, str] = os.environ) -> int | None:
    """The local broker's pid (`broker.sh status`); None for a cluster named by KAFKA_BOOTSTRAP_SERVERS."""
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        return None
    status = subprocess.run([broker_sh, "status"], capture_output=True, text=True, check=False, env=dict(env))
    found = re.search(r"pid (\d+)", status.stdout)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Breakdown:
    """One saturation window: wall seconds, images answered, the workers' stage seconds and batches (summed
    over workers) and each role's CPU seconds (NaN where a process could not be read)."""

    wall_s: float
    answered: int
    workers: int
    stage_s: Mapping[str, float]
    cpu_s: Mapping[str, float]
    batches: float = 0.0
    batched_images: float = 0.0

    def mean_batch(self) -> float:
        """Images per batch the workers ran in the window; NaN when none was read."""
        return self.batched_images / self.batches if self.batches > 0 else math.nan

    def ms_per_img(self, stage: str) -> float:
        """Seconds in `stage` per answered image, in ms; `other`: the inference threads' window less
        every stage they reported. NaN when no worker's stages were read."""
        if self.answered <= 0 or self.workers <= 0:
            return math.nan
        if stage == OTHER:
            seconds = self.workers * self.wall_s - sum(self.stage_s.get(name, 0.0) for name in THREAD_STAGES)
        else:
            seconds = self.stage_s.get(stage, 0.0)
        return 1000 * seconds / self.answered

    def wall_share(self, stage: str) -> float:
        """The share of the inference threads' time (workers x window) spent in `stage`."""
        total = self.workers * self.wall_s
        return self.ms_per_img(stage) * self.answered / 1000 / total if total > 0 else math.nan

    def cpu_ms_per_img(self, role: str) -> float:
        seconds = self.cpu_s.get(role, math.nan)
        return 1000 * seconds / self.answered if self.answered > 0 else math.nan

    def cores(self, role: str) -> float:
        """The role's CPU over the window, in cores."""
        return self.cpu_s.get(role, math.nan) / self.wall_s if self.wall_s > 0 else math.nan


@dataclass
class BreakdownProbe:
    """Reads the counters at the start of a window (`start`) and again at its end (`stop`, or `finish`
    when not stopped before)."""

    metrics_urls: Sequence[str]
    pids: Mapping[str, Sequence[int]]  # role -> the processes whose CPU counts for it
    _counters: list[WorkerCounters | None] = field(default_factory=list)
    _cpu: dict[str, float] = field(default_factory=dict)
    _started: float = math.nan
    _end: tuple[float, list[WorkerCounters | None], dict[str, float]] | None = None

    def start(self) -> None:
        self._counters = [self._scrape(url) for url in self.metrics_urls]
        self._cpu = self._read_cpu()
        self._started = time.perf_counter()

    def stop(self) -> None:
        """The window's end: its counters read now, its figures worked out by `finish`."""
        if self._end is None:
            self._end = (
                time.perf_counter(),
                [self._scrape(url) for url in self.metrics_urls],
                self._read_cpu(),
            )

    def finish(self, *, answered: int, client_cpu_s: float) -> Breakdown:
        """The window from start() to stop() (or now); `client_cpu_s`: the load client's own CPU time in it
        (LoadRun)."""
        self.stop()
        assert self._end is not None
        ended, counters, now = self._end
        wall_s = ended - self._started
        stages: dict[str, float] = {}
        batches = batched_images = 0.0
        read = 0
        for before, after in zip(self._counters, counters, strict=True):
            if before is None or after is None:
                continue
            read += 1
            for stage, seconds in after.stages.items():
                stages[stage] = stages.get(stage, 0.0) + seconds - before.stages.get(stage, 0.0)
            batches += after.batches - before.batches
            batched_images += after.batched_images - before.batched_images
        cpu = {role: now[role] - self._cpu[role] for role in now}
        cpu["client"] = client_cpu_s
        if read < len(self.metrics_urls):  # a share of some workers' time would mislead: none at all
            stages, read, batches, batched_images = {}, 0, 0.0, 0.0
        return Breakdown(
            wall_s=wall_s,
            answered=answered,
            workers=read,
            stage_s=stages,
            cpu_s=cpu,
            batches=batches,
            batched_images=batched_images,
        )

    @staticmethod
    def _scrape(url: str) -> WorkerCounters | None:
        """None when the worker's /metrics cannot be read: the breakdown is left out, the run goes on."""
        try:
            return scrape_worker(url)
        except (OSError, ValueError):
            return None

    def _read_cpu(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.pids.items()}
