"""Session fixtures: one Kafka cluster, one tiny model, per-test topic names, service factories."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir

from captioner.model_factory import make_model
from core.settings import KafkaSettings, TopicSettings, UnknownSettingError, refuse_unknown_variables
from core.topics import ensure_topics
from tests.support import preloaded
from tests.support.broker import SHARED_BOOTSTRAP_VARIABLE, kafka_cluster
from tests.support.models import endless_model
from tests.support.registry import LocalRegistry, local_registry
from tests.support.repo import repo_files
from tests.support.services import (
    CAPTIONER,
    ApiProcess,
    ServiceProcess,
    free_port,
    service_env,
    spawn,
    spawn_api,
)

if TYPE_CHECKING:
    from tests.support.secured_kafka import SecuredKafka


def pytest_configure(config: pytest.Config) -> None:
    """The services the tests start inherit this environment and refuse a CAPTIONER_* variable that is not a
    setting: say so once, before any test (the tests' own variables, like TEST_KAFKA_PORT, have no prefix)."""
    try:
        refuse_unknown_variables()
    except UnknownSettingError as exc:
        raise pytest.UsageError(f"{exc.message} (the tests' broker port is TEST_KAFKA_PORT)") from None


_SHARED_SERVICES = pytest.StashKey[contextlib.ExitStack]()
# Tests that use one of these session services run in one pytest-xdist worker (`--dist loadgroup`), so
# that only one worker starts it: a schema registry or a secured broker is a JVM of its own, and the
# example clients' builds share Maven's and Go's download caches.
_GROUPED_FIXTURES = ("schema_registry", "secured_kafka")
_GROUPED_PATHS = ("tests/examples/",)


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist (`make test`), the controller starts the session's broker before its workers
    start, and they inherit its address: one broker, not one per worker."""
    if not _xdist_controller(session.config) or SHARED_BOOTSTRAP_VARIABLE in os.environ:
        return
    services = contextlib.ExitStack()
    session.config.stash[_SHARED_SERVICES] = services
    os.environ[SHARED_BOOTSTRAP_VARIABLE] = services.enter_context(kafka_cluster())


def pytest_unconfigure(config: pytest.Config) -> None:
    if services := config.stash.get(_SHARED_SERVICES, None):
        services.close()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first, so that pytest-xdist's workers start on them and end together; then each test
    that uses a session service of its own kind is grouped with the others that do."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        group = next((name for name in _GROUPED_FIXTURES if name in getattr(item, "fixturenames", ())), None)
        if group is None and item.nodeid.startswith(_GROUPED_PATHS):
            group = "examples"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """pytest-xdist's loadgroup schedules by a suffix its worker-side hook writes into each grouped test's
    node id. Where the pytest in use ignores that write (pytest 9.2, pytest-dev/pytest-xdist#1386), each
    worker would start its own registry and secured broker, and the example builds would share their
    caches from two processes at once: such a test fails before its fixtures start anything."""
    mark = item.get_closest_marker("xdist_group")
    scheduled_by_group = getattr(item.config.option, "loadgroup", False)
    if mark and scheduled_by_group and not item.nodeid.endswith(f"@{mark.args[0]}"):
        pytest.fail(
            f"--dist loadgroup does not keep the {mark.args[0]!r} group in one worker: this pytest and "
            "pytest-xdist disagree on node ids (pytest-dev/pytest-xdist#1386); install requirements/lock.txt",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def interrupts_as_at_a_terminal() -> None:
    """Tests send SIGINT (Ctrl-C) to what they start and check how it stops. A shell without job control
    starts a background command with SIGINT ignored, and an ignored signal stays ignored through exec
    (bash cannot even trap it): as run from a terminal, the suite's children get it at its default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def forkserver_with_the_sessions_environment(interrupts_as_at_a_terminal: None) -> None:
    preloaded.start_forkserver()


@pytest.fixture(scope="session", autouse=True)
def torch_threads_shared_with_the_other_workers() -> None:
    """pytest-xdist's workers split the cores: a worker whose torch ran on every core would have its
    OpenMP threads spin waiting for ones the other workers had taken off the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# Failing examples are printed with a reproduce blob; no example database inside the repository.
hypothesis_settings.register_profile("captioner", database=None)
hypothesis_settings.load_profile("captioner")


@pytest.fixture(scope="session", autouse=True)
def hypothesis_home_outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Even without an example database, Hypothesis caches the constants it reads from the source
    (.hypothesis/constants) under its home directory, the working directory by default."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis-home"))


@pytest.fixture(scope="session", autouse=True)
def repository_left_as_found(hypothesis_home_outside_the_repository: None) -> Iterator[None]:
    """Tests write only to temporary directories: a file that appears inside the repository fails the run."""
    before = repo_files()
    yield
    appeared = sorted(repo_files() - before)
    assert not appeared, f"tests wrote inside the repository: {appeared[:20]}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model("tiny", tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def endless_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, every caption max_new_tokens long (tests/support/models.py)."""
    return endless_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "endless")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with kafka_cluster() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[SecuredKafka]:
    """A second broker, with TLS, SASL/SCRAM and an authorizer, and a SCRAM user per role; started only
    for the tests that ask for it."""
    from tests.support.secured_kafka import SECURED_USERS, secured_broker

    with secured_broker() as kafka:
        kafka.add_users(*SECURED_USERS)
        yield kafka


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[LocalRegistry]:
    """A real Apicurio Registry (Confluent-compatible API) for the session; tests/support/registry.py."""
    with local_registry() as registry:
        yield registry


@pytest.fixture
def topic_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Topic names of one test, so tests never see each other's records."""
    prefix = f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    return {
        "CAPTIONER_TOPIC_REQUESTS": f"{prefix}.requests",
        "CAPTIONER_TOPIC_REPLIES": f"{prefix}.replies",
        "CAPTIONER_TOPIC_RETRY_PREFIX": f"{prefix}.requests.retry",
        "CAPTIONER_TOPIC_DEAD_LETTER": f"{prefix}.requests.dlq",
        "CAPTIONER_TOPIC_CAPTIONS": f"{prefix}.captions",
        "CAPTIONER_TOPIC_REPLY_PARTITIONS": "4",
        "CAPTIONER_TOPIC_RETRY_DELAYS_S": "[0.5, 1.0, 1.5]",
        "CAPTIONER_WORKER_GROUP_ID": f"{prefix}.workers",
    }


@pytest.fixture
def env(kafka_bootstrap: str, topic_env: dict[str, str], tiny_model_dir: Path) -> dict[str, str]:
    return {
        **topic_env,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CAPTIONER_MODEL": str(tiny_model_dir),
        "CAPTIONER_WORKER_THREADS": "1",
        "CAPTIONER_API_REQUEST_TIMEOUT_S": "20",
        "CAPTIONER_LOG_LEVEL": "INFO",
        # Tests send the same images again and again and expect each to reach a worker; the cache's own
        # tests turn it on.
        "CAPTIONER_CACHE_ENABLED": "false",
    }


@pytest.fixture
def topics(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> TopicSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = TopicSettings()
    ensure_topics(KafkaSettings(), settings)
    return settings


StartWorker = Callable[..., ServiceProcess]
StartApi = Callable[..., ApiProcess]


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    started: list[ServiceProcess] = []

    def start(*, command: Sequence[str] = (CAPTIONER, "worker"), **overrides: str) -> ServiceProcess:
        """command: HARNESS_WORKER for the harness's injected failures (tests/support/harness_worker.py)."""
        worker_id = overrides.pop("CAPTIONER_WORKER_ID", f"worker-{len(started) + 1}")
        process = spawn(
            worker_id,
            command,
            env=service_env(env, CAPTIONER_WORKER_ID=worker_id, **overrides),
            log_path=tmp_path / f"{worker_id}.log",
        )
        started.append(process)
        process.wait_for_log("assigned", timeout_s=90)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_api(env: dict[str, str], tmp_path: Path) -> Iterator[StartApi]:
    started: list[ApiProcess] = []

    def start(*, wait_for_worker: bool = True, **overrides: str) -> ApiProcess:
        """wait_for_worker=False: an API that will see no worker is waited for until all else is ready."""
        index = len(started)
        process = spawn_api(
            f"api-{index}",
            port=free_port(),
            env=service_env(
                env,
                CAPTIONER_API_REPLY_PARTITION=str(index),
                CAPTIONER_API_INSTANCE_ID=f"api-{index}",
                **overrides,
            ),
            log_path=tmp_path / f"api-{index}.log",
        )
        started.append(process)
        process.wait_ready(workers=wait_for_worker)
        return process

    yield start
    for process in started:
        process.stop()
