"""The deployment files, checked offline: they parse, the Kubernetes manifests pass Kubernetes' own schemas
(kubernetes-validate's bundled copies, strict), the KEDA ScaledObject has the documented shape, and every
file agrees with the code: probe paths are API routes, setting names exist, limits cover the API's.

None of this starts a container or a cluster: see the README's "Deploy" section for what was never run."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from core.settings import (
    SETTINGS_GROUPS,
    ApiSettings,
    ImageSettings,
    TopicSettings,
    known_variables,
    load_settings,
)
from producer_api.app import MAX_STOP_AFTER_DRAIN_S, make_api_app
from producer_api.payload import max_body_bytes
from tests.support.repo import REPO

DEPLOY = REPO / "infra" / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
NGINX = DEPLOY / "nginx.conf"
# The oldest and the newest minor that kubernetes-validate bundles and the manifests need (1.28+ for the
# StatefulSet pod-index label; 1.30 is the oldest still commonly offered by managed clusters).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Variables the images or third-party libraries read (not captioner's, so not in core.settings).
THIRD_PARTY_VARIABLES = {"HF_HOME"}
SETTING_NAME = re.compile(r"\bCAPTIONER_[A-Z0-9_]+\b")


# --- helpers -------------------------------------------------------------------------------------------


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, BaseSettings]:
    """Every settings group as a process gets it from this environment (and nothing else of the test's
    own); raises on a value any group refuses."""
    for name in known_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return {name: load_settings(group) for name, group in SETTINGS_GROUPS.items()}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert match, f"unexpected quantity {quantity!r}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def nginx_directive(config: str, name: str) -> str:
    values = re.findall(rf"^\s*{name}\s+([^;]+);", config, flags=re.MULTILINE)
    assert len(values) == 1, f"expected one {name} in nginx.conf, found {values}"
    return values[0].strip()


def nginx_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


# --- Kubernetes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    files = sorted(K8S.glob("*.yaml"))
    assert files, "no manifests in infra/deploy/k8s"
    return [document for path in files for document in load_documents(path)]


def only(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def pod_environment(manifests: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """What the container's settings see: its ConfigMaps, then its literal env (valueFrom is skipped)."""
    spec = container(workload)
    environment: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        environment |= only(manifests, "ConfigMap", source["configMapRef"]["name"])["data"]
    environment |= {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}
    return environment


def pod_templates(manifests: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield manifest


def api(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return only(manifests, "StatefulSet", "captioner-api")


def worker(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return only(manifests, "Deployment", "captioner-worker")


def test_the_manifests_hold_every_piece(manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(m["kind"] for m in manifests)
    expected = ["ConfigMap", "Job", "Service", "Service", "StatefulSet", "Deployment", "ScaledObject"]
    assert kinds == sorted([*expected, "PodDisruptionBudget", "PodDisruptionBudget"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_kind_passes_the_kubernetes_schema(
    manifests: list[dict[str, Any]], version: str
) -> None:
    builtin = [m for m in manifests if not m["apiVersion"].startswith("keda.sh/")]
    for manifest in builtin:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {error.message} at {error.path}")


def test_the_api_probes_are_routes_of_the_api(manifests: list[dict[str, Any]]) -> None:
    routes = {
        route.resource.canonical
        for route in make_api_app(api=ApiSettings(), images=ImageSettings()).router.routes()
        if route.method == "GET" and route.resource is not None
    }
    spec = container(api(manifests))
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= routes
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["port"] in ports


def test_the_api_listens_where_its_probes_and_services_look(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    statefulset = api(manifests)
    settings = settings_from(pod_environment(manifests, statefulset), monkeypatch)
    assert {port["name"]: port["containerPort"] for port in container(statefulset)["ports"]} == {
        "http": settings["api"].port  # type: ignore[attr-defined]
    }
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    for service in (m for m in manifests if m["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(port["targetPort"] == "http" for port in service["spec"]["ports"])
    assert statefulset["spec"]["serviceName"] in {
        m["metadata"]["name"]
        for m in manifests
        if m["kind"] == "Service" and m["spec"].get("clusterIP") == "None"
    }


def test_each_api_pod_gets_its_own_reply_partition(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    statefulset = api(manifests)
    env = {item["name"]: item for item in container(statefulset).get("env", [])}
    ordinal = env["CAPTIONER_API_REPLY_PARTITION"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ordinal == "metadata.labels['apps.kubernetes.io/pod-index']"
    topics = settings_from(pod_environment(manifests, statefulset), monkeypatch)["topics"]
    assert statefulset["spec"]["replicas"] <= topics.reply_partitions  # type: ignore[attr-defined]


def test_the_worker_lives_while_its_metrics_port_answers(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = worker(manifests)
    spec = container(deployment)
    settings = settings_from(pod_environment(manifests, deployment), monkeypatch)["worker"]
    assert settings.metrics_port > 0  # type: ignore[attr-defined]
    assert {port["name"]: port["containerPort"] for port in spec["ports"]} == {
        "metrics": settings.metrics_port  # type: ignore[attr-defined]
    }
    assert spec["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def test_every_container_has_requests_and_limits(manifests: list[dict[str, Any]]) -> None:
    for workload in pod_templates(manifests):
        resources = container(workload)["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources[bound].keys(), (workload["metadata"]["name"], bound)


def test_the_limits_fit_the_settings(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    statefulset, deployment = api(manifests), worker(manifests)
    api_settings = settings_from(pod_environment(manifests, statefulset), monkeypatch)["api"]
    limits = container(statefulset)["resources"]["limits"]
    assert quantity_bytes(limits["memory"]) > api_settings.max_buffered_bytes  # type: ignore[attr-defined]
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = container(statefulset)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The whole stop: preStop, the drain (which outlasts the request timeout), the last answers and closes.
    assert api_settings.drain_timeout_s > api_settings.request_timeout_s  # type: ignore[attr-defined]
    stop_s = float(pre_stop[1]) + api_settings.drain_timeout_s + MAX_STOP_AFTER_DRAIN_S  # type: ignore[attr-defined]
    assert grace >= stop_s

    worker_settings = settings_from(pod_environment(manifests, deployment), monkeypatch)["worker"]
    worker_limits = container(deployment)["resources"]["limits"]
    assert worker_settings.worker_threads == cpu_cores(worker_limits["cpu"])  # type: ignore[attr-defined]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > worker_settings.shutdown_timeout_s  # type: ignore[attr-defined]


def test_a_disruption_budget_covers_each_role(manifests: list[dict[str, Any]]) -> None:
    budgets = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    for workload in (api(manifests), worker(manifests)):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, workload["metadata"]["name"]
        assert covering[0]["spec"]["maxUnavailable"] == 1


# KEDA's CRD schema is not on PyPI or Maven Central, so this is the documented shape of the fields the
# manifest may use (ScaledObject spec and the kafka scaler's metadata), transcribed by hand; like the CRD,
# it refuses unknown fields and non-string trigger metadata.
_KAFKA_METADATA = [
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
    "limitToPartitionsWithLag", "version", "partitionLimitation", "sasl", "tls",
]  # fmt: skip
SCALED_OBJECT_SHAPE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                **{
                    key: {"type": "integer", "minimum": 0}
                    for key in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod")
                },
                **{
                    key: {"type": "integer", "minimum": 0}
                    for key in ("idleReplicaCount", "minReplicaCount", "maxReplicaCount")
                },
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                                "propertyNames": {"enum": _KAFKA_METADATA},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_the_scaled_object_has_keda_s_documented_shape(manifests: list[dict[str, Any]]) -> None:
    scaled = only(manifests, "ScaledObject")
    try:
        jsonschema.validate(scaled, SCALED_OBJECT_SHAPE)
    except jsonschema.ValidationError as error:
        pytest.fail(f"ScaledObject: {error.message} at {list(error.absolute_path)}")


def test_keda_scales_workers_on_their_lag_up_to_the_partition_count(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    scaled, deployment = only(manifests, "ScaledObject"), worker(manifests)
    environment = pod_environment(manifests, deployment)
    settings = settings_from(environment, monkeypatch)
    topics, workers = settings["topics"], settings["worker"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert "replicas" not in deployment["spec"], "KEDA owns the worker count"
    # More workers than request partitions would hold none.
    assert spec["maxReplicaCount"] == topics.request_partitions  # type: ignore[attr-defined]
    assert spec["maxReplicaCount"] == TopicSettings.model_fields["request_partitions"].default
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == workers.worker_group_id  # type: ignore[attr-defined]
    assert trigger["metadata"]["topic"] == topics.requests  # type: ignore[attr-defined]
    assert trigger["metadata"]["bootstrapServers"] == environment["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(trigger["metadata"]["lagThreshold"]) > 0


def test_every_environment_name_in_the_manifests_is_a_setting(manifests: list[dict[str, Any]]) -> None:
    known = known_variables() | THIRD_PARTY_VARIABLES
    used = set(only(manifests, "ConfigMap")["data"])
    for workload in pod_templates(manifests):
        used |= {item["name"] for item in container(workload).get("env", [])}
    assert not used - known, f"not settings in core/settings.py: {sorted(used - known)}"


def test_the_config_map_holds_valid_settings(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_from(only(manifests, "ConfigMap")["data"], monkeypatch)  # raises on a value a setting refuses


# --- every deployment file ----------------------------------------------------------------------------


def deployment_files() -> list[Path]:
    return [*sorted(K8S.glob("*.yaml")), COMPOSE, NGINX, *sorted(DEPLOY.glob("Dockerfile*"))]


@pytest.mark.parametrize("path", deployment_files(), ids=lambda path: path.name)
def test_every_captioner_name_in_the_deployment_files_is_a_setting(path: Path) -> None:
    unknown = set(SETTING_NAME.findall(path.read_text())) - known_variables()
    assert not unknown, f"{path.name} names settings that core/settings.py lacks: {sorted(unknown)}"


# --- docker compose and nginx -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as compose reads it with none of its variables set: `${NAME:-default}` is the default."""
    return dict(yaml.safe_load(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", COMPOSE.read_text())))


def api_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service for name, service in compose["services"].items() if service.get("command") == ["api"]
    }


def test_compose_runs_a_broker_topics_two_apis_nginx_and_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["topics"]["command"] == ["topics", "create"]
    assert len(api_services(compose)) == 2
    assert services["nginx"]["image"].startswith("nginx:")
    assert services["worker"]["command"] == ["worker"]
    assert "replicas" in services["worker"]["deploy"]
    for name, service in services.items():
        if name != "topics":
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_compose_gives_an_api_time_to_drain(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for service in api_services(compose).values():
        for name, value in (service.get("environment") or {}).items():
            monkeypatch.setenv(name, str(value))
        drain_s = load_settings(ApiSettings).drain_timeout_s
        assert float(service["stop_grace_period"].removesuffix("s")) >= drain_s + MAX_STOP_AFTER_DRAIN_S


def test_compose_apis_own_distinct_reply_partitions(compose: dict[str, Any]) -> None:
    partitions = [
        int(s["environment"]["CAPTIONER_API_REPLY_PARTITION"]) for s in api_services(compose).values()
    ]
    assert len(set(partitions)) == len(partitions)
    assert max(partitions) < TopicSettings().reply_partitions


def test_compose_uses_files_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name}: {source}"


def test_compose_environment_names_are_settings(compose: dict[str, Any]) -> None:
    known = known_variables() | THIRD_PARTY_VARIABLES
    for name, service in compose["services"].items():
        if "build" in service:  # our images; the broker's and nginx's variables are their own
            assert not set(service.get("environment", {})) - known, name


def test_nginx_fronts_both_apis_with_room_for_the_largest_request(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = NGINX.read_text()
    upstreams = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", config, flags=re.MULTILINE))
    assert upstreams == {f"{name}:{ApiSettings().port}" for name in api_services(compose)}
    for service in api_services(compose).values():
        settings = settings_from(service["environment"], monkeypatch)["api"]
        # A JSON body of the largest image in base64, as the API itself bounds it.
        largest_body = max_body_bytes(settings.max_image_bytes)  # type: ignore[attr-defined]
        assert nginx_size(nginx_directive(config, "client_max_body_size")) >= largest_body
        for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
            assert nginx_seconds(nginx_directive(config, timeout)) > settings.request_timeout_s  # type: ignore[attr-defined]
    nginx = compose["services"]["nginx"]
    assert any(volume.startswith("./nginx.conf:") for volume in nginx["volumes"])


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    assert shutil.which("nginx"), (
        "nginx is not installed: run `make test-tools` as root, or apt-get install nginx"
    )
    # The compose service names resolve only inside compose; every path goes under tmp_path.
    config = re.sub(r"(server\s+)api-\d+(:\d+)", r"\g<1>127.0.0.1\2", NGINX.read_text())
    (tmp_path / "nginx.conf").write_text(config.replace("/tmp/", f"{tmp_path}/"))
    result = subprocess.run(
        [
            "nginx",
            "-t",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-p",
            f"{tmp_path}/",
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
