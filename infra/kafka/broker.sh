#!/usr/bin/env bash
# A local single-node Apache Kafka (KRaft) broker on loopback, from Maven Central jars.
#   broker.sh fetch|start|stop|status|bootstrap|state|admin-env
# Environment: KAFKA_LOCAL_PORT (9092), KAFKA_LOCAL_STATE (<repo>/.local/kafka/state-<port>[-sasl_ssl]),
# KAFKA_LOCAL_SECURITY: plaintext (default) or sasl_ssl, a TLS + SASL/SCRAM listener with an authorizer
# (infra/kafka/security.sh); then `admin-env` prints the super user's CAPTIONER_KAFKA_* settings, which
# are also kept in <state>/admin.env.
# KAFKA_LOCAL_STOP_TIMEOUT_S (30: how long `stop` waits for a controlled shutdown before it kills the
# broker).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
# shellcheck source=security.sh
source "$here/security.sh"
security="$(security_mode)"
libs="$repo/.local/kafka/libs"
port="${KAFKA_LOCAL_PORT:-9092}"
controller_port="${KAFKA_LOCAL_CONTROLLER_PORT:-$((port + 1))}"
default_state="$repo/.local/kafka/state-$port"
[[ "$security" == plaintext ]] || default_state+="-$security"
state="${KAFKA_LOCAL_STATE:-$default_state}"
data_dir="$state/data"
pid_file="$state/broker.pid"
log_file="$state/broker.log"
config="$state/server.properties"

fetch() {
  if [[ -f "$libs/.complete" ]]; then return; fi
  command -v mvn >/dev/null || { echo "broker.sh: Maven (mvn) is needed to fetch Kafka from Maven Central" >&2; exit 1; }
  echo "Fetching Apache Kafka jars from Maven Central into $libs" >&2
  rm -rf "$libs"
  # stdout carries only the bootstrap address; Maven's output goes to stderr.
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

running() {
  pid_alive "$pid_file"
}

java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties" -cp "$libs/*")

run_java() {
  "$(java_cmd)" "${java_opts[@]}" "$@"
}

# server.properties from the template; secured, its listener lines give way to security.sh's.
write_config() {
  if [[ "$security" == plaintext ]]; then
    fill_template "$here/server.properties" > "$config"
    return
  fi
  make_tls "$state/tls"
  (umask 077  # the config holds the passwords
    { fill_template "$here/server.properties" | grep -Ev "$listener_lines"
      security_properties "$port" "$controller_port" "$state"; } > "$config"
    admin_env "127.0.0.1:$port" "$state" > "$state/admin.env")
}

fill_template() {
  sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@DATA_DIR@|$data_dir|g" "$1"
}

start() {
  fetch
  if running; then echo "127.0.0.1:$port"; return; fi
  if port_open "$port"; then
    echo "broker.sh: port $port is taken by another process; set KAFKA_LOCAL_PORT" >&2; exit 1
  fi
  mkdir -p "$state"
  write_config
  if [[ ! -f "$data_dir/meta.properties" ]]; then
    local cluster_id format_args=()
    [[ "$security" == plaintext ]] || format_args=(--add-scram "$(admin_scram "$state")")
    cluster_id="$(run_java kafka.tools.StorageTool random-uuid 2>>"$log_file")"
    if ! run_java kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$config" "${format_args[@]}" \
      >>"$log_file" 2>&1; then
      echo "broker.sh: formatting $data_dir failed; see $log_file" >&2; tail -5 "$log_file" >&2; exit 1
    fi
  fi
  # A session of its own: a signal to the starter's process group (a supervisor stopping `make run`, Ctrl-C)
  # must not stop the broker before the clients that still write to it; its starter stops it.
  setsid nohup "$(java_cmd)" "${java_opts[@]}" kafka.Kafka "$config" >>"$log_file" 2>&1 < /dev/null &
  echo $! > "$pid_file"
  for _ in $(seq 1 120); do
    if port_open "$port"; then
      [[ "$security" == plaintext ]] || echo "broker.sh: $security; the super user's client settings: $state/admin.env" >&2
      echo "127.0.0.1:$port"; return
    fi
    if ! running; then echo "broker.sh: broker exited; see $log_file" >&2; tail -20 "$log_file" >&2; exit 1; fi
    sleep 0.5
  done
  echo "broker.sh: broker did not open port $port within 60 s; see $log_file" >&2
  exit 1
}

stop() {
  stop_pid "$pid_file" "${KAFKA_LOCAL_STOP_TIMEOUT_S:-30}" "broker.sh: broker"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pid_file")) on 127.0.0.1:$port"; else echo "stopped"; exit 3; fi ;;
  bootstrap) echo "127.0.0.1:$port" ;;
  state) echo "$state" ;;
  admin-env)
    if [[ "$security" == plaintext ]]; then echo "broker.sh: admin-env needs KAFKA_LOCAL_SECURITY=sasl_ssl" >&2; exit 2; fi
    cat "$state/admin.env" ;;
  *) echo "usage: broker.sh fetch|start|stop|status|bootstrap|state|admin-env" >&2; exit 2 ;;
esac
