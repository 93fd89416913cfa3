"""librdkafka's own log lines and errors, through Python logging, and whether this process reaches a broker.

Without a `logger`, librdkafka writes each line to stderr; with no broker listening, each client retries
its bootstrap broker many times a second (it re-bootstraps whenever every broker is down), one line a try.
Here a process's clients share one BrokerWatch: their lines go to the `captioner.librdkafka` logger, a line
that keeps recurring is logged once per `repeat_after_s` with a count of those left out, and losing every
broker is said once when it starts and once when it ends (docs/security.md, When a worker stops).
Shutdown steps ask `reachable()` so that they do not wait for a broker that is not there.

"Reachable" comes from librdkafka itself, per client: `_ALL_BROKERS_DOWN` (its error callback) says every
connection of that client is down; its statistics (every STATISTICS_INTERVAL_MS) list each broker's connection
state, and one that is UP says a broker answers. The process reaches a broker while any client's fresh report
says so. librdkafka hands all of this over, like the log lines, in each client's poll.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from core.logs import LIBRDKAFKA_LOG

ErrorCallback = Callable[[KafkaError], None]
StatsCallback = Callable[[str], None]

STATISTICS_INTERVAL_MS = 1_000
# A client polled as usual reports every interval; one that stopped reporting (closed, no longer polled)
# no longer speaks for the process after a few.
FRESH_REPORT_S = 3 * STATISTICS_INTERVAL_MS / 1000
REPEAT_AFTER_S = 60.0
# Facilities of the lines librdkafka writes for each failed connection attempt, each connection lost and each
# request timed out on a dead connection: while no broker is reachable they are the absence itself, counted.
CONNECTION_FACILITIES = frozenset({"FAIL", "REQTMOUT"})
# librdkafka's own log levels (syslog's); 7 (debug) comes only from the debug contexts CAPTIONER_KAFKA_DEBUG
# asks for, so those lines are logged at INFO, where the operator who asked sees them.
_LEVELS = {
    0: logging.CRITICAL,
    1: logging.CRITICAL,
    2: logging.CRITICAL,
    3: logging.ERROR,
    4: logging.WARNING,
}
# What librdkafka says at notice or info level while it waits out a state that ends by itself, retrying on its
# own: a fresh broker still loading its group and transaction coordinators. DEBUG, so that a normal start
# says nothing of it; at warning level and above the same words are logged as they come.
_TRANSIENT = ("Coordinator load in progress",)
_NOTICE = 5
# Errors librdkafka also writes as log lines, or that only restate what the statistics say.
_ALSO_LOGGED = frozenset({KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._ALL_BROKERS_DOWN})
_MAX_KEYS = 256  # distinct recurring lines remembered (a line can hold a hostile reply topic's name)
_DIGITS = re.compile(r"\d+")
_THREAD_PREFIX = re.compile(r"^\[thrd:[^\]]*\]: ")
_BROKER_UP = '"state":"UP"'  # a broker connection's state in librdkafka's statistics JSON


def _python_level(level: int, text: str) -> int:
    if level >= _NOTICE and any(phrase in text for phrase in _TRANSIENT):
        return logging.DEBUG
    return _LEVELS.get(level, logging.INFO)


@dataclass(slots=True)
class _Report:
    up: bool
    at: float


class BrokerWatch:
    """Thread-safe: every client's polling thread calls in."""

    def __init__(
        self,
        *,
        log: logging.Logger = LIBRDKAFKA_LOG,
        repeat_after_s: float = REPEAT_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._repeat_after_s = repeat_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._clients = itertools.count()
        self._reports: dict[int, _Report] = {}
        self._absent_since: float | None = None  # as last logged
        self._left_out_while_absent = 0
        self._last_failure = "no broker connection is up"
        # normalised line -> (when it was last logged, how many like it were left out since)
        self._recent: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def client_config(
        self,
        *,
        error_cb: ErrorCallback | None = None,
        stats_cb: StatsCallback | None = None,
        statistics: bool = True,
    ) -> dict[str, Any]:
        """The callbacks one client reports through; its own `error_cb` and `stats_cb` are called too.
        `statistics=False` for a client that is polled only now and then (an admin client): its lines and
        errors still come here."""
        client = next(self._clients)

        def on_error(error: KafkaError) -> None:
            self.error(client, error)
            if error_cb is not None:
                error_cb(error)

        def on_stats(stats_json: str) -> None:
            self.statistics(client, stats_json)
            if stats_cb is not None:
                stats_cb(stats_json)

        config: dict[str, Any] = {"logger": self, "error_cb": on_error}
        if statistics:
            config |= {"stats_cb": on_stats, "statistics.interval.ms": STATISTICS_INTERVAL_MS}
        return config

    def reachable(self) -> bool:
        with self._lock:
            return self._reachable()

    def log(self, level: int, fmt: str, *args: object) -> None:
        """librdkafka's `logger` interface: `log(level, "%s [%s] %s", facility, client, message)`."""
        facility, text = (str(args[0]), str(args[-1])) if len(args) >= 2 else ("", fmt)
        with self._lock:
            if facility in CONNECTION_FACILITIES:
                self._last_failure = _THREAD_PREFIX.sub("", text)
                if self._absent_since is not None:
                    self._left_out_while_absent += 1
                    return
            left_out = self._left_out(_DIGITS.sub("#", f"{facility} {text}"))
        if left_out is not None:
            self._emit(_python_level(level, text), fmt % args if args else fmt, left_out)

    def error(self, client: int, error: KafkaError) -> None:
        """librdkafka's `error_cb`: every broker down is this client's report; errors that are not also
        log lines are logged like them."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._report(client, up=False)
        if error.code() in _ALSO_LOGGED:
            return
        with self._lock:
            left_out = self._left_out(_DIGITS.sub("#", f"{error.name()} {error.str()}"))
        if left_out is not None:
            self._emit(logging.ERROR if error.fatal() else logging.WARNING, error.str(), left_out)

    def statistics(self, client: int, stats_json: str) -> None:
        """librdkafka's `stats_cb`: a broker connection UP means this client reaches the cluster."""
        start = stats_json.find('"brokers":')
        end = stats_json.find('"topics":', start)
        brokers = stats_json[start:end] if 0 <= start < end else stats_json
        self._report(client, up=_BROKER_UP in brokers)

    def _reachable(self) -> bool:
        """Any client's fresh report of a broker up; with none fresh, the latest report; with none, yes.
        Called with the lock held."""
        now = self._clock()
        fresh = [report.up for report in self._reports.values() if now - report.at <= FRESH_REPORT_S]
        if fresh:
            return any(fresh)
        latest = max(self._reports.values(), key=lambda report: report.at, default=None)
        return latest is None or latest.up

    def _report(self, client: int, *, up: bool) -> None:
        with self._lock:
            self._reports[client] = _Report(up=up, at=self._clock())
            reachable = self._reachable()
            if reachable == (self._absent_since is None):
                return
            if not reachable:
                self._absent_since, self._left_out_while_absent = self._clock(), 0
                reason = self._last_failure
            else:
                absent_s, self._absent_since = self._clock() - (self._absent_since or 0.0), None
                left_out = self._left_out_while_absent
        if not reachable:
            self._log.warning("no Kafka broker reachable (%s); still trying", reason)
        else:
            self._log.warning(
                "a Kafka broker is reachable again after %.1f s (%d connection failures not logged)",
                absent_s,
                left_out,
            )

    def _left_out(self, key: str) -> int | None:
        """None: leave this line out (one like it was logged less than repeat_after_s ago); otherwise how
        many like it were left out since the last one logged. Called with the lock held."""
        now = self._clock()
        last = self._recent.get(key)
        if last is not None and now - last[0] < self._repeat_after_s:
            self._recent[key] = (last[0], last[1] + 1)
            return None
        self._recent[key] = (now, 0)
        self._recent.move_to_end(key)
        while len(self._recent) > _MAX_KEYS:
            self._recent.popitem(last=False)
        return 0 if last is None else last[1]

    def _emit(self, level: int, message: str, left_out: int) -> None:
        if left_out:
            self._log.log(level, "%s (and %d more like it since the last one logged)", message, left_out)
        else:
            self._log.log(level, "%s", message)
