#!/usr/bin/env bash
# A real Apache Kafka broker for the tests: one KRaft node that is both
# broker and controller, on 127.0.0.1, run from jars Maven resolves
# through scripts/kafka/pom.xml (pinned versions; Java 17 or later).
#
#   scripts/kafka.sh start    start it, or find it running; prints its
#                             bootstrap address, 127.0.0.1:PORT
#   scripts/kafka.sh stop     SIGTERM, then SIGKILL after 30 s
#   scripts/kafka.sh status   whether it runs, and where (exit 1 if not)
#   scripts/kafka.sh clean    stop it and delete its data and ports
#   scripts/kafka.sh tool CLASS [ARGS...]
#                             run a Kafka main class on the broker's
#                             classpath, e.g. org.apache.kafka.tools.TopicCommand
#
# Everything lives in target/kafka/: the resolved classpath, the two
# ports (kept, so that a stop and a start keep the address and the
# data), server.properties, data/, broker.log, broker.pid, bootstrap.
# Topics are not created on first use: the tests create theirs, and the
# runtime its own through the admin API.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/scripts/kafka/pom.xml"
log4j="$root/scripts/kafka/log4j2.properties"
home="$root/target/kafka"
data="$home/data"
classpath_file="$home/classpath"
ports_file="$home/ports"
pid_file="$home/broker.pid"
log_file="$home/broker.log"
bootstrap_file="$home/bootstrap"
properties="$home/server.properties"
start_timeout_s=${KAFKA_START_TIMEOUT_S:-90}
stop_timeout_s=${KAFKA_STOP_TIMEOUT_S:-30}
# Beside a test suite on two cores: a small heap, one GC thread.
jvm_opts=(-Xms256m -Xmx512m -XX:+UseSerialGC -XX:ActiveProcessorCount=2
  -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$log4j")

die() { echo "kafka.sh: $*" >&2; exit 1; }

need_java() {
  command -v java >/dev/null || die "java not found (Kafka 4 needs Java 17 or later)"
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "java $v found; Kafka 4 needs Java 17 or later"
}

# The classpath, resolved by Maven once and again only when the pom
# changes or a jar has left the local repository. Offline first.
classpath() {
  mkdir -p "$home"
  if [ -s "$classpath_file" ] && [ "$classpath_file" -nt "$pom" ] && jars_present; then
    cat "$classpath_file"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found (it resolves the broker's jars)"
  local goal=(-q -B -f "$pom" dependency:build-classpath "-Dmdep.outputFile=$classpath_file.new")
  if ! mvn -o "${goal[@]}" >"$home/maven.log" 2>&1; then
    mvn "${goal[@]}" >"$home/maven.log" 2>&1 || { cat "$home/maven.log" >&2; die "maven could not resolve $pom"; }
  fi
  mv "$classpath_file.new" "$classpath_file"
  cat "$classpath_file"
}

jars_present() {
  local jar jars
  IFS=: read -r -a jars <"$classpath_file"
  for jar in "${jars[@]}"; do [ -f "$jar" ] || return 1; done
}

# The pid of the running broker, or nothing (a stale pid file, or a pid
# now another process's, counts as not running).
running_pid() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $properties" || return 1
  echo "$pid"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Two ports no one listens on, below the ephemeral range so that no
# outgoing connection takes one between a stop and a start.
pick_ports() {
  local picked=() p
  while [ ${#picked[@]} -lt 2 ]; do
    p=$((20000 + RANDOM % 12000))
    listening "$p" || [ "${picked[0]:-}" = "$p" ] || picked+=("$p")
  done
  echo "${picked[@]}"
}

write_properties() {
  local port=$1 controller=$2
  cat >"$properties" <<EOF
# Written by scripts/kafka.sh at each start.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$controller
log.dirs=$data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
# A test that forces compaction (segment.ms and
# min.cleanable.dirty.ratio on its topic) sees it within a second.
log.cleaner.threads=1
log.cleaner.backoff.ms=500
log.cleaner.dedupe.buffer.size=16777216
log.segment.delete.delay.ms=1000
EOF
}

# A cluster id: 16 random bytes, base64url without padding, not starting
# with '-' (as `kafka-storage random-uuid` makes them).
cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    [ "${id:0:1}" != "-" ] && echo "$id" && return
  done
}

start() {
  local pid
  if pid=$(running_pid); then
    cat "$bootstrap_file"
    return
  fi
  rm -f "$pid_file"
  need_java
  local cp
  cp=$(classpath)
  [ -s "$ports_file" ] || pick_ports >"$ports_file"
  local port controller
  read -r port controller <"$ports_file"
  ! listening "$port" || die "port $port is taken (scripts/kafka.sh clean picks new ports)"
  write_properties "$port" "$controller"
  if [ ! -f "$data/meta.properties" ]; then
    mkdir -p "$data"
    java "${jvm_opts[@]}" -Dkafka.log.level=WARN -cp "$cp" kafka.tools.StorageTool format \
      --config "$properties" --cluster-id "$(cluster_id)" --standalone >"$home/format.log" 2>&1 ||
      { cat "$home/format.log" >&2; die "formatting $data failed"; }
  fi
  [ -f "$log_file" ] && mv "$log_file" "$log_file.1"
  # A session of its own: an interrupt meant for the caller's terminal
  # does not reach it; `stop` does. The pid written is java's (exec).
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
    java "${jvm_opts[@]}" -cp "$cp" kafka.Kafka "$properties" >"$log_file" 2>&1 </dev/null &
  local deadline=$((SECONDS + start_timeout_s))
  while :; do
    pid=$(cat "$pid_file" 2>/dev/null || true)
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$log_file" >&2
      rm -f "$pid_file"
      die "the broker exited during start (log above, whole in $log_file)"
    fi
    if grep -q "Kafka Server started" "$log_file" 2>/dev/null && listening "$port"; then
      break
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 40 "$log_file" >&2
      stop >/dev/null
      die "the broker did not start within ${start_timeout_s}s (log above, whole in $log_file)"
    fi
    sleep 0.2
  done
  echo "127.0.0.1:$port" >"$bootstrap_file"
  cat "$bootstrap_file"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pid_file"
    echo "kafka: not running"
    return
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + stop_timeout_s))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "kafka.sh: no exit ${stop_timeout_s}s after SIGTERM; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + stop_timeout_s))
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
  echo "kafka: stopped"
}

status() {
  if running_pid >/dev/null; then
    echo "kafka: running at $(cat "$bootstrap_file") (pid $(cat "$pid_file"), log $log_file)"
  else
    echo "kafka: not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  clean)
    stop >/dev/null
    rm -rf "$data" "$ports_file" "$bootstrap_file" "$properties"
    echo "kafka: data deleted"
    ;;
  tool)
    [ $# -ge 2 ] || die "usage: scripts/kafka.sh tool MAIN-CLASS [ARGS...]"
    shift
    need_java
    cp=$(classpath)
    exec java "${jvm_opts[@]}" -Dkafka.log.level=WARN -cp "$cp" "$@"
    ;;
  *) die "usage: scripts/kafka.sh start|stop|status|clean|tool MAIN-CLASS [ARGS...]" ;;
esac
