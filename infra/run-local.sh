#!/usr/bin/env bash
# `make run`: the local broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster), WORKERS workers and
# one API, in the foreground. Ctrl-C or SIGTERM, to this script or to its whole process group, stops the
# API and the workers gracefully (killed after STOP_TIMEOUT_S), then the broker, which runs in a session of
# its own so that a group's signal cannot stop it first; then it says "stopped" and exits 0. Worker N serves
# Prometheus metrics on METRICS_PORT_BASE+N (9101, 9102, ...); "ready" is said once the API's /readyz
# answers 200, which needs a worker holding request partitions. SECURE=1 and REGISTRY=1: see below.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/.venv/bin"
workers="${WORKERS:-1}"
metrics_base="${METRICS_PORT_BASE:-9100}"
api_url="http://127.0.0.1:${CAPTIONER_API_PORT:-9000}"
stop_timeout_s="${STOP_TIMEOUT_S:-8}"
started_broker=0
started_registry=0
pids=()

# The services first, while the broker still takes their last outcomes and commits; each gets SIGTERM
# (again, when the whole group was signalled) and is killed past stop_timeout_s. The broker last, given
# 5 s before it is killed too.
stop_all() {
  # Further signals (make passes its SIGTERM on to this script, after the group's) must not cut this short.
  trap '' INT TERM
  trap - EXIT
  local pid give_up=$((SECONDS + stop_timeout_s))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  while [[ -n "$(jobs -rp)" ]] && ((SECONDS < give_up)); do sleep 0.1; done
  for pid in $(jobs -rp); do
    echo "pid $pid did not stop within ${stop_timeout_s} s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "$started_broker" == 1 ]]; then KAFKA_LOCAL_STOP_TIMEOUT_S=5 "$repo/infra/kafka/broker.sh" stop; fi
  if [[ "$started_registry" == 1 ]]; then "$repo/infra/registry/registry.sh" stop; fi
}
stopped_by() {
  stop_all
  echo "stopped ($1)"
  exit 0
}
trap 'stopped_by SIGINT' INT
trap 'stopped_by SIGTERM' TERM
trap stop_all EXIT

# SECURE=1: a broker with TLS, SASL/SCRAM and ACLs, each process its own principal (infra/secure-local.sh).
use_role() { :; }
if [[ "${SECURE:-0}" == 1 ]]; then source "$repo/infra/secure-local.sh"; fi

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  export KAFKA_BOOTSTRAP_SERVERS="$("$repo/infra/kafka/broker.sh" start)"
  started_broker=1
fi
if [[ "${SECURE:-0}" == 1 ]]; then secure_local_setup; fi
# REGISTRY=1: a local schema registry (infra/registry), in a session of its own like the broker, so that
# requests, replies and caption-cache entries are written in its framing (docs/schema-registry.md).
if [[ "${REGISTRY:-0}" == 1 && -z "${CAPTIONER_SCHEMA_REGISTRY_URL:-}" ]]; then
  export CAPTIONER_SCHEMA_REGISTRY_URL="$("$repo/infra/registry/registry.sh" start)"
  started_registry=1
  echo "schema registry: $CAPTIONER_SCHEMA_REGISTRY_URL"
fi
if [[ -z "${CAPTIONER_WORKER_THREADS:-}" ]]; then
  # Several workers on one machine split its cores instead of oversubscribing them.
  export CAPTIONER_WORKER_THREADS=$(( $(nproc) / workers > 0 ? $(nproc) / workers : 1 ))
fi
# The caption cache's key pair, made once unless the cache is off or keys are given: workers sign
# entries with it, the API serves only those.
if [[ "${CAPTIONER_CACHE_ENABLED:-true}" != false && -z "${CAPTIONER_CACHE_SIGNING_KEY_FILE:-}" ]]; then
  cache_keys="$repo/.local/cache-keys"
  [[ -f "$cache_keys/cache-signing.pem" ]] || "$bin/captioner" cache keygen --out "$cache_keys" >/dev/null
  export CAPTIONER_CACHE_SIGNING_KEY_FILE="$cache_keys/cache-signing.pem"
  export CAPTIONER_CACHE_VERIFY_KEYS_FILE="${CAPTIONER_CACHE_VERIFY_KEYS_FILE:-$cache_keys/cache-verify.pem}"
fi
echo "Kafka: $KAFKA_BOOTSTRAP_SERVERS  model: ${CAPTIONER_MODEL:-microsoft/git-base-textcaps}  workers: $workers"
use_role operator
"$bin/captioner" topics create
use_role worker
if ((workers == 1)); then
  CAPTIONER_WORKER_ID="${CAPTIONER_WORKER_ID:-worker}-1" CAPTIONER_WORKER_METRICS_PORT=$((metrics_base + 1)) \
    "$bin/captioner" worker &
else
  # One process forks the workers after its imports, which they then share (docs/scaling.md); they are
  # worker-1, worker-2, ... on the metrics ports that follow, as separate processes would be.
  CAPTIONER_WORKER_ID="${CAPTIONER_WORKER_ID:-worker}" CAPTIONER_WORKER_PROCESSES="$workers" \
    CAPTIONER_WORKER_METRICS_PORT=$((metrics_base + 1)) "$bin/captioner" worker &
fi
pids+=($!)
for i in $(seq 1 "$workers"); do
  echo "worker-$i metrics: http://127.0.0.1:$((metrics_base + i))/metrics"
done
use_role api
"$bin/captioner" api &
pids+=($!)

ready() {
  "$bin/python" - "$api_url/readyz" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:
    sys.exit(0 if answer.status == 200 else 1)
PY
}
# Loading a model can take minutes: wait as long as every process lives.
until ready; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a captioner process exited before the service was ready" >&2; exit 1; }
  done
  sleep 1
done
echo "ready: $api_url (demo page /, API metrics $api_url/metrics)"
# Any process exiting (a worker that cannot load its model, say) stops the others.
wait -n "${pids[@]}" || status=$?
echo "a captioner process exited (status ${status:-0}); stopping" >&2
exit "${status:-1}"
