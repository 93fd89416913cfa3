#!/usr/bin/env bash
# A local Apicurio Registry on loopback: in-memory storage, the Confluent-compatible API under
# /apis/ccompat/v7, BACKWARD compatibility by default. Built from Maven Central into one jar (pom.xml).
#   registry.sh fetch|start|stop|status|url
# Environment: REGISTRY_LOCAL_PORT (8081), REGISTRY_LOCAL_STATE (<repo>/.local/registry/state-<port>),
# REGISTRY_LOCAL_COMPATIBILITY (BACKWARD: the global rule; Apicurio's own default is NONE).
# `start` prints the registry's URL for CAPTIONER_SCHEMA_REGISTRY_URL on stdout, and nothing else.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
home="$repo/.local/registry"
version="2.4.2.Final"
jar="$home/apicurio-registry-$version.jar"
port="${REGISTRY_LOCAL_PORT:-8081}"
state="${REGISTRY_LOCAL_STATE:-$home/state-$port}"
pid_file="$state/registry.pid"
log_file="$state/registry.log"
url="http://127.0.0.1:$port/apis/ccompat/v7"
compatibility="${REGISTRY_LOCAL_COMPATIBILITY:-BACKWARD}"

fetch() {
  if [[ -f "$jar" ]]; then return; fi
  command -v mvn >/dev/null || { echo "registry.sh: Maven (mvn) is needed to build the registry from Maven Central" >&2; exit 1; }
  echo "Building Apicurio Registry $version from Maven Central into $jar" >&2
  local build="$home/build"
  rm -rf "$build"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" package "-Dregistry.build.directory=$build" >&2
  mv "$build/captioner-local-registry-1-runner.jar" "$jar.part"
  rm -rf "$build"
  mv "$jar.part" "$jar"
}

running() {
  pid_alive "$pid_file"
}

# Ready once the Confluent-compatible API answers 200 (an open port alone can come a moment earlier).
answers() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'GET /apis/ccompat/v7/subjects HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    read -r -t 5 status <&3 && [[ "$status" == *" 200 "* ]]
  ) 2>/dev/null
}

start() {
  fetch
  if running; then echo "$url"; return; fi
  if port_open "$port"; then
    echo "registry.sh: port $port is taken by another process; set REGISTRY_LOCAL_PORT" >&2; exit 1
  fi
  mkdir -p "$state"
  # `cd` first, apart: with `&&`, the `&` would put a subshell in the background, not java.
  (cd "$state"; setsid nohup "$(java_cmd)" -Xms64m -Xmx384m -XX:+UseSerialGC -Djava.awt.headless=true \
    "-Djava.io.tmpdir=$state" \
    -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$port" \
    "-Dregistry.rules.global.compatibility=$compatibility" \
    -jar "$jar" >>"$log_file" 2>&1 < /dev/null & echo $! > "$pid_file")
  for _ in $(seq 1 240); do
    if answers; then echo "$url"; return; fi
    if ! running; then echo "registry.sh: registry exited; see $log_file" >&2; tail -20 "$log_file" >&2; exit 1; fi
    sleep 0.5
  done
  echo "registry.sh: registry did not answer on port $port within 120 s; see $log_file" >&2
  exit 1
}

stop() {
  stop_pid "$pid_file" 20 "registry.sh: registry"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pid_file")) at $url"; else echo "stopped"; exit 3; fi ;;
  url) echo "$url" ;;
  *) echo "usage: registry.sh fetch|start|stop|status|url" >&2; exit 2 ;;
esac
