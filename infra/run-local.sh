#!/usr/bin/env bash
# `make run`: the local broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster), WORKERS workers and
# one API, in the foreground. Ctrl-C or SIGTERM stops them gracefully, the broker last. Worker N serves
# Prometheus metrics on METRICS_PORT_BASE+N (9101, 9102, ...); "ready" is said once the API's /readyz
# answers 200, which needs a worker holding request partitions.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/.venv/bin"
workers="${WORKERS:-1}"
metrics_base="${METRICS_PORT_BASE:-9100}"
api_url="http://127.0.0.1:${CAPTIONER_API_PORT:-9000}"
started_broker=0
pids=()

stop_all() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "$started_broker" == 1 ]]; then "$repo/infra/kafka/broker.sh" stop; fi
}
trap stop_all INT TERM EXIT

# SECURE=1: a broker with TLS, SASL/SCRAM and ACLs, each process its own principal (infra/secure-local.sh).
use_role() { :; }
if [[ "${SECURE:-0}" == 1 ]]; then source "$repo/infra/secure-local.sh"; fi

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  export KAFKA_BOOTSTRAP_SERVERS="$("$repo/infra/kafka/broker.sh" start)"
  started_broker=1
fi
if [[ "${SECURE:-0}" == 1 ]]; then secure_local_setup; fi
if [[ -z "${CAPTIONER_WORKER_THREADS:-}" ]]; then
  # Several workers on one machine split its cores instead of oversubscribing them.
  export CAPTIONER_WORKER_THREADS=$(( $(nproc) / workers > 0 ? $(nproc) / workers : 1 ))
fi
# The caption cache's key pair, made once: workers sign entries with it, the API serves only those.
cache_keys="$repo/.local/cache-keys"
[[ -f "$cache_keys/cache-signing.pem" ]] || "$bin/captioner" cache keygen --out "$cache_keys" >/dev/null
export CAPTIONER_CACHE_SIGNING_KEY_FILE="${CAPTIONER_CACHE_SIGNING_KEY_FILE:-$cache_keys/cache-signing.pem}"
export CAPTIONER_CACHE_VERIFY_KEYS_FILE="${CAPTIONER_CACHE_VERIFY_KEYS_FILE:-$cache_keys/cache-verify.pem}"
echo "Kafka: $KAFKA_BOOTSTRAP_SERVERS  model: ${CAPTIONER_MODEL:-microsoft/git-base-textcaps}  workers: $workers"
use_role operator
"$bin/captioner" topics create
use_role worker
for i in $(seq 1 "$workers"); do
  CAPTIONER_WORKER_ID="${CAPTIONER_WORKER_ID:-worker}-$i" CAPTIONER_METRICS_PORT=$((metrics_base + i)) \
    "$bin/captioner" worker &
  pids+=($!)
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
