"""The Grafana dashboard and the Prometheus alert rules in infra/monitoring: they parse, every metric they
name is one the code exports, and promtool accepts the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

import inference_consumer.metrics
import producer_api.metrics

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
METRIC_NAME = re.compile(r"\bcaptioner_[a-z0-9_]+")
SERIES_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exported_series(*modules: ModuleType) -> set[str]:
    """The series names the metrics modules' metrics expose (a counter's _total, a histogram's buckets)."""
    names = set()
    for module in modules:
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                for family in metric.describe():
                    names |= {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
    return names


EXPORTED = exported_series(producer_api.metrics, inference_consumer.metrics)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_exported_names_are_read_from_the_code() -> None:
    assert {"captioner_worker_queue_seconds_bucket", "captioner_api_requests_total"} <= EXPORTED


def test_every_metric_on_the_dashboard_is_exported() -> None:
    expressions = dashboard_expressions()
    named = {name for expr in expressions for name in METRIC_NAME.findall(expr)}

    assert named and named <= EXPORTED, sorted(named - EXPORTED)
    assert len(expressions) >= 10


def test_every_metric_in_the_alert_rules_is_exported() -> None:
    found = rules()
    named = {name for rule in found for name in METRIC_NAME.findall(rule["expr"])}

    assert named and named <= EXPORTED, sorted(named - EXPORTED)
    assert {rule["alert"] for rule in found} == {
        "CaptionerConsumerLagGrowing",
        "CaptionerDeadLetterGrowing",
        "CaptionerNoWorkerAssigned",
        "CaptionerApi5xxRatio",
    }
    assert all(rule.get("for") and rule["labels"]["severity"] for rule in found)


def test_promtool_accepts_the_rules() -> None:
    assert shutil.which("promtool"), (
        "promtool is not installed: run `make test-tools` as root, or apt-get install prometheus"
    )
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
