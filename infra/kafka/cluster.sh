#!/usr/bin/env bash
# A local three-broker Apache Kafka (KRaft) cluster on loopback, from the Maven Central jars broker.sh fetches:
# the production layout scaled down, to prove failover (make chaos). Each node is one JVM that is both broker and
# controller; the three controllers form the metadata quorum, so any one node can die and the cluster goes on.
#
#   cluster.sh start [NODE]       start every node (or one), formatting fresh storage first; prints the bootstrap list
#   cluster.sh stop [NODE]        controlled shutdown (SIGTERM), every node or one
#   cluster.sh restart NODE       stop, then start again, one node
#   cluster.sh kill NODE          SIGKILL: a crash, no controlled shutdown
#   cluster.sh pause|resume NODE  SIGSTOP / SIGCONT: a node that hangs (GC pause, stuck disk) but keeps its sockets
#   cluster.sh partition|heal NODE   cut a node off the network (iptables on loopback; root only) / undo it
#   cluster.sh status | bootstrap | pid NODE | port NODE | clean
# NODE is 1, 2 or 3. Environment: KAFKA_CLUSTER_BASE_PORT (29092): node N listens for clients on BASE+N-1 and for
# the controller quorum on KAFKA_CLUSTER_CONTROLLER_BASE_PORT (BASE+100)+N-1; KAFKA_CLUSTER_STATE (<repo>/.local/kafka/cluster-<BASE>[-sasl_ssl]) holds
# each node's config, data, log and pid under node-N/. KAFKA_LOCAL_SECURITY=sasl_ssl: every node's client listener
# is TLS + SASL/SCRAM with an authorizer, as broker.sh's (infra/kafka/security.sh); the super user's settings are
# in <state>/admin.env.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
# shellcheck source=security.sh
source "$here/security.sh"
security="$(security_mode)"
libs="$repo/.local/kafka/libs"
base_port="${KAFKA_CLUSTER_BASE_PORT:-29092}"
default_state="$repo/.local/kafka/cluster-$base_port"
[[ "$security" == plaintext ]] || default_state+="-$security"
state="${KAFKA_CLUSTER_STATE:-$default_state}"
nodes=(1 2 3)

client_port() { echo $((base_port + $1 - 1)); }
controller_port() { echo $((${KAFKA_CLUSTER_CONTROLLER_BASE_PORT:-$((base_port + 100))} + $1 - 1)); }
node_dir() { echo "$state/node-$1"; }
pid_of() { cat "$(node_dir "$1")/broker.pid" 2>/dev/null || true; }
# A node's sockets carry its own group id (its client port), so that `partition` can match its outgoing packets.
node_gid() { client_port "$1"; }
chain() { echo "CAPTIONER-KAFKA-$1"; }

bootstrap() {
  local list=() node
  for node in "${nodes[@]}"; do list+=("127.0.0.1:$(client_port "$node")"); done
  (IFS=,; echo "${list[*]}")
}

voters() {
  local list=() node
  for node in "${nodes[@]}"; do list+=("$node@127.0.0.1:$(controller_port "$node")"); done
  (IFS=,; echo "${list[*]}")
}

# Three JVMs share the machine: a small heap each (the cluster holds little data).
java_opts=(-Xms128m -Xmx384m -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties" -cp "$libs/*")

running() {
  pid_alive "$(node_dir "$1")/broker.pid"
}

check_node() {
  [[ " ${nodes[*]} " == *" ${1:-} "* ]] || { echo "cluster.sh: NODE must be one of ${nodes[*]}" >&2; exit 2; }
}

write_config() {
  local node="$1" dir; dir="$(node_dir "$node")"
  if [[ "$security" == plaintext ]]; then
    node_properties "$node" > "$dir/server.properties"
    return
  fi
  make_tls "$state/tls"
  (umask 077  # the config holds the passwords
    { node_properties "$node" | grep -Ev "$listener_lines"
      security_properties "$(client_port "$node")" "$(controller_port "$node")" "$state"; } > "$dir/server.properties"
    admin_env "$(bootstrap)" "$state" > "$state/admin.env")
}

node_properties() {
  local node="$1" dir; dir="$(node_dir "$node")"
  cat <<EOF
# Node $node of a three-node KRaft cluster (combined broker + controller). Written by cluster.sh.
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$(client_port "$node"),CONTROLLER://127.0.0.1:$(controller_port "$node")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$node")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# Durability: every topic on all three nodes, a write acknowledged (acks=all) only once two hold it, and never a
# leader that might lack acknowledged records.
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# Failure detection for tests: a node that stops heartbeating is fenced (and loses its leaderships) in 3 s, a
# follower that stops fetching leaves the ISR in 5 s (production defaults: 9 s and 30 s).
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
replica.lag.time.max.ms=5000
replica.socket.timeout.ms=10000
# Leaderships go back to their preferred nodes soon after a node returns, as they would in production (5 min).
leader.imbalance.check.interval.seconds=10
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
log.retention.hours=24
log.segment.bytes=67108864
offsets.retention.minutes=20160
EOF
}

format_storage() {
  local node dir failed=0
  if [[ ! -f "$state/cluster.id" ]]; then
    # A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what `StorageTool random-uuid` prints),
    # drawn again when it starts with "-", which StorageTool would read as an option (random-uuid does the same).
    local id=""
    until [[ -n "$id" && "$id" != -* ]]; do
      id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    printf %s "$id" > "$state/cluster.id"
  fi
  local format_args=()
  [[ "$security" == plaintext ]] || format_args=(--add-scram "$(admin_scram "$state")")
  for node in "${nodes[@]}"; do
    dir="$(node_dir "$node")"
    [[ -f "$dir/data/meta.properties" ]] && continue
    "$(java_cmd)" "${java_opts[@]}" kafka.tools.StorageTool format -t "$(cat "$state/cluster.id")" \
      -c "$dir/server.properties" "${format_args[@]}" >>"$dir/broker.log" 2>&1 &
  done
  wait
  for node in "${nodes[@]}"; do
    dir="$(node_dir "$node")"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
      echo "cluster.sh: formatting node $node failed; see $dir/broker.log" >&2; tail -5 "$dir/broker.log" >&2
      failed=1
    fi
  done
  [[ "$failed" == 0 ]] || exit 1
}

launch() {
  local node="$1" dir port; dir="$(node_dir "$node")"; port="$(client_port "$node")"
  if running "$node"; then return; fi
  if port_open "$port"; then
    echo "cluster.sh: port $port is taken by another process; set KAFKA_CLUSTER_BASE_PORT" >&2; exit 1
  fi
  local as_node=()
  if [[ "$(id -u)" == 0 ]] && command -v setpriv >/dev/null; then
    as_node=(setpriv "--regid=$(node_gid "$node")" --clear-groups --)
  fi
  nohup "${as_node[@]}" "$(java_cmd)" "${java_opts[@]}" kafka.Kafka "$dir/server.properties" \
    >>"$dir/broker.log" 2>&1 </dev/null &
  echo $! > "$dir/broker.pid"
}

wait_open() {
  local node="$1" dir port; dir="$(node_dir "$node")"; port="$(client_port "$node")"
  for _ in $(seq 1 240); do
    if port_open "$port"; then return; fi
    if ! running "$node"; then
      echo "cluster.sh: node $node exited; see $dir/broker.log" >&2; tail -20 "$dir/broker.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "cluster.sh: node $node did not open port $port within 120 s; see $dir/broker.log" >&2
  exit 1
}

start() {
  "$here/broker.sh" fetch
  local targets=("$@") node
  [[ ${#targets[@]} -gt 0 ]] || targets=("${nodes[@]}")
  for node in "${nodes[@]}"; do mkdir -p "$(node_dir "$node")"; write_config "$node"; done
  format_storage
  for node in "${targets[@]}"; do launch "$node"; done
  for node in "${targets[@]}"; do wait_open "$node"; done
  bootstrap
}

stop_node() {
  local node="$1" pid; pid="$(pid_of "$node")"
  if ! running "$node"; then rm -f "$(node_dir "$node")/broker.pid"; return; fi
  kill -CONT "$pid" 2>/dev/null || true  # a paused node cannot shut down
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$(node_dir "$node")/broker.pid"; return; }
    sleep 0.5
  done
  echo "cluster.sh: node $node did not stop in 60 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$(node_dir "$node")/broker.pid"
}

stop() {
  local node
  if [[ $# -gt 0 ]]; then stop_node "$1"; return; fi
  for node in "${nodes[@]}"; do heal "$node" 2>/dev/null || true; done
  # The last voters standing cannot elect anyone: stop the nodes in parallel, not one after another.
  for node in "${nodes[@]}"; do stop_node "$node" & done
  wait
}

signal_node() {
  local node="$1" signal="$2"
  running "$node" || { echo "cluster.sh: node $node is not running" >&2; exit 1; }
  kill "-$signal" "$(pid_of "$node")"
}

kill_node() {
  local node="$1" pid; pid="$(pid_of "$node")"
  signal_node "$node" KILL
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$(node_dir "$node")/broker.pid"
}

can_partition() {
  if [[ "$(id -u)" != 0 ]]; then echo "needs root (iptables)"; return 1; fi
  if ! command -v iptables >/dev/null; then echo "iptables is not installed (apt-get install iptables)"; return 1; fi
  if ! iptables -S OUTPUT >/dev/null 2>&1; then echo "iptables is not permitted here (no CAP_NET_ADMIN)"; return 1; fi
  if ! command -v setpriv >/dev/null; then echo "setpriv (util-linux) is not installed"; return 1; fi
}

# Drops, on loopback, every packet to the node's ports and every packet its own sockets send (matched by the group
# id it runs under), both ways for connections it accepted and for those it opened.
partition() {
  local node="$1" reason
  reason="$(can_partition)" || { echo "cluster.sh: cannot partition: $reason" >&2; exit 4; }
  heal "$node"
  iptables -N "$(chain "$node")"
  iptables -A "$(chain "$node")" -o lo -m owner --gid-owner "$(node_gid "$node")" -j DROP
  iptables -A "$(chain "$node")" -o lo -p tcp -m multiport \
    --dports "$(client_port "$node"),$(controller_port "$node")" -j DROP
  iptables -I OUTPUT -j "$(chain "$node")"
}

heal() {
  local node="$1"
  command -v iptables >/dev/null || return 0
  iptables -S "$(chain "$node")" >/dev/null 2>&1 || return 0
  while iptables -D OUTPUT -j "$(chain "$node")" 2>/dev/null; do :; done
  iptables -F "$(chain "$node")"
  iptables -X "$(chain "$node")"
}

status() {
  local node any=1
  for node in "${nodes[@]}"; do
    if running "$node"; then
      any=0; echo "node $node: running (pid $(pid_of "$node")) on 127.0.0.1:$(client_port "$node")"
    else
      echo "node $node: stopped"
    fi
  done
  return "$any"
}

command="${1:-}"
[[ $# -gt 0 ]] && shift
case "$command" in
  start) for node in "$@"; do check_node "$node"; done; start "$@" ;;
  stop) [[ $# -eq 0 ]] || check_node "$1"; stop "$@" ;;
  restart) check_node "${1:-}"; stop_node "$1"; start "$1" ;;
  kill) check_node "${1:-}"; kill_node "$1" ;;
  pause) check_node "${1:-}"; signal_node "$1" STOP ;;
  resume) check_node "${1:-}"; signal_node "$1" CONT ;;
  partition) check_node "${1:-}"; partition "$1" ;;
  heal) check_node "${1:-}"; heal "$1" ;;
  can-partition) can_partition ;;
  status) status || exit 3 ;;
  bootstrap) bootstrap ;;
  pid) check_node "${1:-}"; running "$1" && pid_of "$1" ;;
  port) check_node "${1:-}"; client_port "$1" ;;
  clean) stop; rm -rf "$state" ;;
  *) echo "usage: cluster.sh start [NODE]|stop [NODE]|restart NODE|kill NODE|pause NODE|resume NODE|partition NODE|heal NODE|status|bootstrap|pid NODE|port NODE|clean" >&2
     exit 2 ;;
esac
