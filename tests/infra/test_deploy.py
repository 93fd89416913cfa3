"""The deployment files, checked offline: they parse, the Kubernetes manifests pass Kubernetes' own schemas
(kubernetes-validate's bundled copies, strict), the KEDA ScaledObject has the documented shape, and every
file agrees with the code: probe paths are API routes, setting names exist, limits cover the API's.

None of this starts a container or a cluster: see docs/deploy.md, "Never run"."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from core.cache_signing import load_signer, load_verifier
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
KUSTOMIZATION = K8S / "kustomization.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
NGINX = DEPLOY / "nginx.conf"
# The oldest and the newest minor that kubernetes-validate bundles and the manifests need (1.28+ for the
# StatefulSet pod-index label; 1.30 is the oldest still commonly offered by managed clusters).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Variables the images or third-party libraries read (not captioner's, so not in core.settings).
THIRD_PARTY_VARIABLES = {"HF_HOME"}
SETTING_NAME = re.compile(r"\bCAPTIONER_[A-Z0-9_]+\b")


# --- helpers -------------------------------------------------------------------------------------------


# Files the settings read as they load, mounted from secrets in a deployment: what such a secret holds.
SECRET_FILE_CONTENTS = {"CAPTIONER_API_KEYS_FILE": "0123456789abcdef" * 4 + "\n"}


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, BaseSettings]:
    """Every settings group as a process gets it from this environment (and nothing else of the test's
    own); raises on a value any group refuses. A secret file named there is read from a stand-in in a
    temporary folder, since the deployment's mount point does not exist here."""
    for name in known_variables():
        monkeypatch.delenv(name, raising=False)
    stand_ins = Path(tempfile.mkdtemp(prefix="deploy-secrets-"))
    for name, value in environment.items():
        if name in SECRET_FILE_CONTENTS:
            value = str(stand_ins / name)
            Path(value).write_text(SECRET_FILE_CONTENTS[name])
        monkeypatch.setenv(name, str(value))
    try:
        return {name: load_settings(group) for name, group in SETTINGS_GROUPS.items()}
    finally:
        shutil.rmtree(stand_ins)


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
    """Every object in infra/deploy/k8s (the kustomization is no object: it names the files and images)."""
    files = sorted(path for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)
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
    expected = ["ConfigMap", "ServiceAccount", "Job", "Service", "Service", "StatefulSet", "Deployment"]
    keda = ["ScaledObject", "TriggerAuthentication"]
    policies = ["NetworkPolicy"] * 4  # default deny, API, worker, the brokers' side
    assert kinds == sorted([*expected, *keda, *policies, "PodDisruptionBudget", "PodDisruptionBudget"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_kind_passes_the_kubernetes_schema(
    manifests: list[dict[str, Any]], version: str
) -> None:
    builtin = [m for m in manifests if not m["apiVersion"].startswith("keda.sh/")]
    assert len(builtin) == len(manifests) - 2
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
        "http": settings["api"].port,  # type: ignore[attr-defined]
        "metrics": settings["api"].metrics_port,  # type: ignore[attr-defined]
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
    # Configured and started by kafka/start.sh, which tests/infra/test_compose_broker.py runs for real.
    assert services["kafka"]["entrypoint"] == ["/bin/sh", "/etc/captioner/kafka-start.sh"]
    assert "./kafka/start.sh:/etc/captioner/kafka-start.sh:ro" in services["kafka"]["volumes"]
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
        drain_s = settings_from(service.get("environment") or {}, monkeypatch)["api"].drain_timeout_s  # type: ignore[attr-defined]
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
    for script in (COMPOSE.parent / "make-secrets.sh", COMPOSE.parent / "kafka" / "start.sh"):
        assert script.is_file() and script.stat().st_mode & 0o111, script


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


# --- locked down: pinned images, no tokens, non-root, network policy, Kafka over SASL_SSL -------------

# name:tag@sha256:<64 hex>: the tag for people, the digest for the pull.
PINNED = re.compile(r"[a-z0-9][a-z0-9./_-]*:[\w.-]+@sha256:[0-9a-f]{64}")
OUR_IMAGES = {"captioner-api", "captioner-worker"}
KAFKA_SECRET_SETTINGS = {"CAPTIONER_KAFKA_SASL_PASSWORD", "CAPTIONER_KAFKA_SSL_KEY_PASSWORD"}
SECRET_SETTINGS = KAFKA_SECRET_SETTINGS | {"CAPTIONER_API_KEYS"}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in pod_templates(manifests):
        yield workload["metadata"]["name"], workload["spec"]["template"]["spec"]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_image_is_pinned_by_digest(manifests: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    for name, pod in pod_specs(manifests):
        for spec in all_containers(pod):
            assert PINNED.fullmatch(spec["image"]), f"{name}: {spec['image']} is not pinned by digest"
    for name, service in compose["services"].items():
        if "build" in service:  # built here from our Dockerfiles, whose FROM lines are checked below
            assert service["image"].split(":")[0] in OUR_IMAGES, name
        else:
            assert PINNED.fullmatch(service["image"]), f"compose {name}: {service['image']} is not pinned"
    for dockerfile in sorted(DEPLOY.glob("Dockerfile*")):
        for image in re.findall(r"^FROM (\S+)", dockerfile.read_text(), flags=re.MULTILINE):
            assert PINNED.fullmatch(image), f"{dockerfile.name}: FROM {image} is not pinned by digest"


def test_our_images_get_their_release_digest_from_the_kustomization(manifests: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    used = {
        spec["image"].split(":")[0] for _name, pod in pod_specs(manifests) for spec in all_containers(pod)
    }
    assert used == OUR_IMAGES
    entries = {entry["name"]: entry for entry in kustomization["images"]}
    assert entries.keys() == OUR_IMAGES
    for entry in entries.values():
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"]), entry
    # Everything but the brokers' side, which lives in the brokers' namespace.
    assert sorted(kustomization["resources"]) == ["captioner.yaml", "keda.yaml"]
    assert kustomization["namespace"] == "captioner"


def test_no_pod_gets_a_service_account_token(manifests: list[dict[str, Any]]) -> None:
    accounts = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ServiceAccount"}
    for name, pod in pod_specs(manifests):
        assert pod["automountServiceAccountToken"] is False, name
        account = accounts[pod["serviceAccountName"]]  # a dedicated one, not the namespace's default
        assert account["automountServiceAccountToken"] is False


def test_every_pod_runs_non_root_read_only_without_capabilities(
    manifests: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    for name, pod in pod_specs(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for spec in all_containers(pod):
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["read_only"] is True, name
            assert service["cap_drop"] == ["ALL"], name
            assert "no-new-privileges:true" in service["security_opt"], name


def network_policies(manifests: list[dict[str, Any]], namespace: str | None) -> list[dict[str, Any]]:
    return [
        m for m in manifests if m["kind"] == "NetworkPolicy" and m["metadata"].get("namespace") == namespace
    ]


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    assert set(policy["spec"]["podSelector"]) <= {"matchLabels"}, "only matchLabels is checked here"
    return bool(wanted.items() <= labels.items())


def test_nothing_reaches_captioner_pods_but_the_api_port_and_metrics_from_monitoring(
    manifests: list[dict[str, Any]],
) -> None:
    policies = network_policies(manifests, None)
    denying = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert denying and "Ingress" in denying[0]["spec"]["policyTypes"], "no default deny for ingress"
    for workload in pod_templates(manifests):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = {port["name"] for port in container(workload).get("ports", [])}
        rules = [rule for p in policies if selects(p, labels) for rule in p["spec"].get("ingress", [])]
        opened: set[str] = set()
        for rule in rules:
            assert rule.get("ports"), f"{workload['metadata']['name']}: a rule opens every port"
            names = {port["port"] for port in rule["ports"]}
            opened |= names
            if names == {"http"}:
                assert workload is api(manifests), "only the API's port is open to all"
            else:
                assert names == {"metrics"} and rule["from"] == [MONITORING], rule
        assert opened <= ports, f"{workload['metadata']['name']}: a rule names a port it lacks"


def test_the_brokers_take_connections_only_from_captioner_keda_and_each_other(
    manifests: list[dict[str, Any]],
) -> None:
    bootstrap = only(manifests, "ConfigMap")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    host, broker_port = bootstrap.rsplit(":", 1)
    namespace = host.split(".")[1]  # <service>.<namespace>
    [policy] = network_policies(manifests, namespace)
    brokers = policy["spec"]["podSelector"]["matchLabels"]
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    captioner_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": kustomization["namespace"]}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "captioner"}},
    }
    keda = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
        "podSelector": {"matchLabels": {"app": "keda-operator"}},
    }
    for workload in pod_templates(manifests):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert captioner_pods["podSelector"]["matchLabels"].items() <= labels.items()
    for rule in policy["spec"]["ingress"]:
        sources = rule["from"]  # never from anywhere
        assert not any("ipBlock" in source for source in sources)
        if sources == [{"podSelector": {"matchLabels": brokers}}]:
            continue  # replication and the quorum, among the brokers themselves
        ports = {str(port["port"]) for port in rule["ports"]}
        if ports == {broker_port}:
            assert sources == [captioner_pods, keda]
        else:
            assert ports == {"metrics"} and sources == [MONITORING]


def secret_env(spec: dict[str, Any], name: str) -> dict[str, str]:
    [item] = [item for item in spec.get("env", []) if item["name"] == name]
    assert "value" not in item, f"{name} is written in the manifest"
    return dict(item["valueFrom"]["secretKeyRef"])


def mounted_secrets(pod: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
    """mount path -> the Secret mounted there."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in spec.get("volumeMounts", []) if m["name"] in secrets}


def test_kafka_clients_use_sasl_ssl_each_role_its_own_principal_from_secrets(
    manifests: list[dict[str, Any]],
) -> None:
    config = only(manifests, "ConfigMap")["data"]
    assert config["CAPTIONER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["CAPTIONER_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert not SECRET_SETTINGS & config.keys()
    principals = set()
    for workload in pod_templates(manifests):
        pod, spec = workload["spec"]["template"]["spec"], container(workload)
        literal = {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}
        assert not SECRET_SETTINGS & literal.keys()
        principals.add(literal["CAPTIONER_KAFKA_SASL_USERNAME"])
        password = secret_env(spec, "CAPTIONER_KAFKA_SASL_PASSWORD")
        assert password["name"].startswith("captioner-kafka-"), password
        ca = Path(config["CAPTIONER_KAFKA_SSL_CA_LOCATION"])
        assert mounted_secrets(pod, spec)[str(ca.parent)] == "captioner-kafka-ca"
    assert len(principals) == len(list(pod_templates(manifests))), "a principal shared by two roles"


def test_keda_reads_the_lag_over_sasl_ssl_as_its_own_principal(manifests: list[dict[str, Any]]) -> None:
    [trigger] = only(manifests, "ScaledObject")["spec"]["triggers"]
    assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
    authentication = only(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    try:
        jsonschema.validate(authentication, TRIGGER_AUTHENTICATION_SHAPE)
    except jsonschema.ValidationError as error:
        pytest.fail(f"TriggerAuthentication: {error.message} at {list(error.absolute_path)}")
    parameters = {ref["parameter"]: ref["name"] for ref in authentication["spec"]["secretTargetRef"]}
    assert parameters == {
        "username": "captioner-kafka-keda",
        "password": "captioner-kafka-keda",
        "ca": "captioner-kafka-ca",
    }


# Hand transcription of KEDA's documented TriggerAuthentication fields used here (secretTargetRef).
TRIGGER_AUTHENTICATION_SHAPE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {key: {"type": "string"} for key in ("parameter", "name", "key")},
                    },
                }
            },
        },
    },
}


def test_the_api_reads_its_keys_from_a_secret(
    manifests: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    statefulset = api(manifests)
    pod, spec = statefulset["spec"]["template"]["spec"], container(statefulset)
    keys_file = Path(pod_environment(manifests, statefulset)["CAPTIONER_API_KEYS_FILE"])
    assert mounted_secrets(pod, spec)[str(keys_file.parent)] == "captioner-api-keys"
    for name, service in api_services(compose).items():
        assert service["environment"]["CAPTIONER_API_KEYS_FILE"] == "/run/secrets/api_keys", name
        assert "api_keys" in service["secrets"], name


def compose_secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """/run/secrets/<target> -> the secret mounted there."""
    targets = {}
    for entry in service.get("secrets", []):
        source, target = (entry, entry) if isinstance(entry, str) else (entry["source"], entry.get("target"))
        targets[f"/run/secrets/{target or source}"] = source
    return targets


def test_compose_clients_use_sasl_ssl_each_role_its_own_principal_from_secrets(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    principals: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        environment = {key: str(value) for key, value in service["environment"].items()}
        kafka = settings_from(environment, monkeypatch)["kafka"]  # the compose settings validate
        assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512"), name  # type: ignore[attr-defined]
        assert not SECRET_SETTINGS & environment.keys(), f"{name} writes a secret in the compose file"
        mounted = compose_secret_targets(service)
        assert environment["CAPTIONER_KAFKA_SSL_CA_LOCATION"] in mounted, name
        # The password: its role's secret, mounted as kafka_password, read by the entrypoint.
        password_secret = mounted["/run/secrets/kafka_password"]
        assert "/run/secrets/kafka_password" in service["entrypoint"][2], name
        assert "CAPTIONER_KAFKA_SASL_PASSWORD=" in service["entrypoint"][2], name
        principals.setdefault(environment["CAPTIONER_KAFKA_SASL_USERNAME"], set()).add(password_secret)
    assert principals == {
        "captioner-admin": {"kafka_admin_password"},
        "captioner-api": {"kafka_api_password"},
        "captioner-worker": {"kafka_worker_password"},
    }


def test_compose_keeps_the_broker_off_the_public_side(compose: dict[str, Any]) -> None:
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"nginx"}
    assert compose["services"]["kafka"]["networks"] == ["kafka"]
    assert compose["networks"]["kafka"]["internal"] is True
    assert "kafka" not in compose["services"]["nginx"]["networks"]


def test_make_secrets_makes_every_secret_compose_reads(compose: dict[str, Any], tmp_path: Path) -> None:
    made = subprocess.run(
        [str(DEPLOY / "make-secrets.sh"), str(tmp_path / "secrets")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert made.returncode == 0, made.stderr
    wanted = {Path(secret["file"]).name for secret in compose["secrets"].values()}
    assert {path.name for path in (tmp_path / "secrets").iterdir()} == wanted
    assert all(secret["file"].startswith("./secrets/") for secret in compose["secrets"].values())
    assert (tmp_path / "secrets").stat().st_mode & 0o077 == 0  # the folder is the owner's alone
    passwords = {(tmp_path / "secrets" / name).read_text() for name in wanted if name.endswith("password")}
    assert len(passwords) == 4  # one each, none shared
    assert len((tmp_path / "secrets" / "api_keys").read_text().strip()) >= 32


def test_workers_sign_cache_entries_and_apis_verify_them_with_keys_from_secrets(
    manifests: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    """Without these the caption cache is off in a deployment: workers sign with the private key, API
    instances serve only entries the public key verifies (core/cache_signing.py)."""
    worker_set, api_set = worker(manifests), api(manifests)
    signing = Path(pod_environment(manifests, worker_set)["CAPTIONER_CACHE_SIGNING_KEY_FILE"])
    verify = Path(pod_environment(manifests, api_set)["CAPTIONER_CACHE_VERIFY_KEYS_FILE"])
    worker_pod, api_pod = worker_set["spec"]["template"]["spec"], api_set["spec"]["template"]["spec"]
    assert (
        mounted_secrets(worker_pod, container(worker_set))[str(signing.parent)] == "captioner-cache-signing"
    )
    assert mounted_secrets(api_pod, container(api_set))[str(verify.parent)] == "captioner-cache-verify"
    assert "CAPTIONER_CACHE_SIGNING_KEY_FILE" not in pod_environment(manifests, api_set)  # never on the API
    worker_service = compose["services"]["worker"]
    assert (
        compose_secret_targets(worker_service)[
            worker_service["environment"]["CAPTIONER_CACHE_SIGNING_KEY_FILE"]
        ]
        == "cache_signing_key"
    )
    for name, service in api_services(compose).items():
        mounted = compose_secret_targets(service)
        assert mounted[service["environment"]["CAPTIONER_CACHE_VERIFY_KEYS_FILE"]] == "cache_verify_keys", (
            name
        )
        assert "cache_signing_key" not in mounted.values(), name


def test_make_secrets_makes_a_cache_key_pair_that_signs_and_verifies(tmp_path: Path) -> None:
    made = subprocess.run(
        [str(DEPLOY / "make-secrets.sh"), str(tmp_path / "secrets")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert made.returncode == 0, made.stderr
    signer = load_signer(tmp_path / "secrets" / "cache_signing_key")
    verifier = load_verifier(tmp_path / "secrets" / "cache_verify_keys")
    assert verifier.problem(b"key", b"value", signer.headers(b"key", b"value")) is None
    assert verifier.problem(b"key", b"other", signer.headers(b"key", b"value")) is not None
