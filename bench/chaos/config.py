"""What one chaos run does, read from the environment once."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.models import REPO

FAULTS = (
    "leader-kill",
    "reply-leader-kill",
    "rolling-restart",
    "worker-kill",
    "zombie-worker",
    "partition",
)


@dataclass(frozen=True)
class ChaosConfig:
    run_id: str
    run_dir: Path  # logs, and the cluster's state under kafka/
    faults: tuple[str, ...]
    base_port: int  # the cluster's first client port (infra/kafka/cluster.sh)
    model_dir: Path | None  # None: the cached tiny model (bench/models.py)
    images: int  # distinct test images (those whose titles collide are dropped)
    rate: float | None  # requests/s; None: a share of the capacity measured first
    capacity_share: float
    max_rate: float
    steady_s: float
    request_timeout_s: float
    session_timeout_ms: int
    max_batch_size: int
    new_tokens: int  # every caption is forced to this length: a batch costs fixed work
    max_recovery_s: float  # a fault whose throughput is not back by then is reported as such
    stable_s: float  # throughput must stay back this long before the next fault

    @property
    def client_timeout_s(self) -> float:
        """Slightly above the API's own deadline: an answer later than this counts as lost."""
        return self.request_timeout_s + 5.0

    @property
    def zombie_pause_s(self) -> float:
        return self.session_timeout_ms / 1000 + 4.0


def load_config(env: Mapping[str, str] = os.environ) -> ChaosConfig:
    run_id = env.get("CHAOS_RUN_ID") or time.strftime("chaos-%Y%m%d-%H%M%S")
    faults = tuple(
        name.strip() for name in env.get("CHAOS_FAULTS", ",".join(FAULTS)).split(",") if name.strip()
    )
    unknown = [name for name in faults if name not in FAULTS]
    if unknown:
        raise ValueError(f"unknown CHAOS_FAULTS {unknown}; choose from {', '.join(FAULTS)}")
    rate = env.get("CHAOS_RATE")
    model = env.get("CHAOS_MODEL_DIR")
    return ChaosConfig(
        run_id=run_id,
        run_dir=Path(env.get("CHAOS_RUN_DIR") or REPO / ".local" / "chaos" / run_id),
        faults=faults,
        base_port=int(env.get("KAFKA_CLUSTER_BASE_PORT", "29092")),
        model_dir=Path(model) if model else None,
        images=int(env.get("CHAOS_IMAGES", "12")),
        rate=float(rate) if rate else None,
        capacity_share=float(env.get("CHAOS_CAPACITY_SHARE", "0.7")),
        max_rate=float(env.get("CHAOS_MAX_RATE", "40")),
        steady_s=float(env.get("CHAOS_STEADY_S", "20")),
        request_timeout_s=float(env.get("CHAOS_REQUEST_TIMEOUT_S", "20")),
        session_timeout_ms=int(env.get("CHAOS_SESSION_TIMEOUT_MS", "6000")),
        max_batch_size=int(env.get("CHAOS_MAX_BATCH_SIZE", "8")),
        new_tokens=int(env.get("CHAOS_NEW_TOKENS", "100")),
        max_recovery_s=float(env.get("CHAOS_MAX_RECOVERY_S", "60")),
        stable_s=float(env.get("CHAOS_STABLE_S", "5")),
    )
