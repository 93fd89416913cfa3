# Shell functions the local broker, cluster and registry scripts share (sourced, not run).

# The JVM: $JAVA_HOME's when set, else the one on PATH.
java_cmd() {
  if [[ -n "${JAVA_HOME:-}" ]]; then echo "$JAVA_HOME/bin/java"; else command -v java; fi
}

# pid_alive FILE: the process whose id FILE holds is running.
pid_alive() {
  [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# port_open PORT: something listens on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stop_pid FILE TIMEOUT_S WHAT: SIGTERM to the process FILE names, SIGKILL if it still runs TIMEOUT_S later;
# FILE is removed either way. WHAT names it in the line said before a kill.
stop_pid() {
  local pid_file="$1" timeout_s="$2" what="$3" pid
  if ! pid_alive "$pid_file"; then rm -f "$pid_file"; return; fi
  pid="$(cat "$pid_file")"
  kill -TERM "$pid"
  for _ in $(seq 1 $((timeout_s * 10))); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; return; }
    sleep 0.1
  done
  echo "$what did not stop in $timeout_s s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}
