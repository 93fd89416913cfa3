"""What exactly once costs (CAPTIONER_DELIVERY_GUARANTEE=exactly_once: one Kafka transaction per commit),
measured beside at least once in the same run: the base-model service idle and at saturation, and the
tiny model's transport capacity, under each guarantee."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bench.measure import ApiCost, CapacityResult, IdleResult, SaturationResult
from bench.service import ServiceSpec
from bench.stats import median

GUARANTEE_VARIABLE = "CAPTIONER_DELIVERY_GUARANTEE"
EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"
LABELS = {EXACTLY_ONCE: "eos", AT_LEAST_ONCE: "alo"}  # names each variant's topics, group and logs


def with_guarantee(spec: ServiceSpec, guarantee: str) -> ServiceSpec:
    """The same service under `guarantee`, whatever the environment sets, on topics of its own."""
    return replace(
        spec,
        label=f"{spec.label}-{LABELS[guarantee]}",
        extra_env=(*spec.extra_env, (GUARANTEE_VARIABLE, guarantee)),
    )


@dataclass(frozen=True)
class GuaranteeRun:
    """One guarantee's figures: the base-model service idle and at saturation, the tiny one's capacity."""

    guarantee: str
    idle: IdleResult
    saturation: SaturationResult
    capacity: CapacityResult
    api_cost: ApiCost

    @property
    def idle_ms(self) -> float:
        return median(self.idle.e2e_ms)

    @property
    def overhead_p50_ms(self) -> float:
        return self.idle.overhead_p50_ms

    @property
    def service_img_s(self) -> float:
        return self.saturation.img_s

    @property
    def capacity_rps(self) -> float:
        return self.capacity.capacity_rps

    @property
    def api_cpu_ms_per_request(self) -> float:
        return self.api_cost.cpu_ms_per_request


def guarantee_run(
    guarantee: str,
    base: tuple[IdleResult, SaturationResult] | None,
    capacity: tuple[CapacityResult, ApiCost] | None,
) -> GuaranteeRun | None:
    """The figures of both services under `guarantee`; None unless both ran."""
    if base is None or capacity is None:
        return None
    return GuaranteeRun(
        guarantee=guarantee, idle=base[0], saturation=base[1], capacity=capacity[0], api_cost=capacity[1]
    )


@dataclass(frozen=True)
class GuaranteeComparison:
    at_least_once: GuaranteeRun
    exactly_once: GuaranteeRun

    @property
    def saturation_ratio(self) -> float:
        """Exactly once's images/s at saturation over at least once's (1: it costs nothing)."""
        return _ratio(self.exactly_once.service_img_s, self.at_least_once.service_img_s)

    @property
    def capacity_ratio(self) -> float:
        """Exactly once's transport capacity over at least once's."""
        return _ratio(self.exactly_once.capacity_rps, self.at_least_once.capacity_rps)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(figure, at least once, exactly once, exactly once against at least once), to print:
        throughputs as a ratio, costs as a difference."""
        alo, eos = self.at_least_once, self.exactly_once
        return [
            _row("service_img_s", alo.service_img_s, eos.service_img_s, 3, f"{self.saturation_ratio:.2f} x"),
            _row("idle_ms", alo.idle_ms, eos.idle_ms, 0, f"{eos.idle_ms - alo.idle_ms:+.1f} ms"),
            _row(
                "overhead_p50_ms",
                alo.overhead_p50_ms,
                eos.overhead_p50_ms,
                1,
                f"{eos.overhead_p50_ms - alo.overhead_p50_ms:+.1f} ms",
            ),
            _row("capacity_rps", alo.capacity_rps, eos.capacity_rps, 0, f"{self.capacity_ratio:.2f} x"),
            _row(
                "api_cpu_ms_per_request",
                alo.api_cpu_ms_per_request,
                eos.api_cpu_ms_per_request,
                2,
                f"{eos.api_cpu_ms_per_request - alo.api_cpu_ms_per_request:+.2f} ms",
            ),
        ]

    def describe(self) -> str:
        """One line: each figure at least once / exactly once, then exactly once against it."""
        return "  ".join(f"{name} {alo} / {eos} ({change})" for name, alo, eos, change in self.rows())


def _row(name: str, alo: float, eos: float, digits: int, change: str) -> tuple[str, str, str, str]:
    return name, f"{alo:.{digits}f}", f"{eos:.{digits}f}", change


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
