#!/usr/bin/env bash
# Makes the brokers Herald's tests and demo talk to reachable on loopback: installs what is missing
# from Debian's packages and starts what is not running. Idempotent; quiet when all is well.
#
#   scripts/services.sh              Redis, NATS (JetStream) and RabbitMQ
#   scripts/services.sh redis nats   only those
set -uo pipefail

services=("$@")
[ ${#services[@]} -eq 0 ] && services=(redis nats rabbitmq)

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
state_dir="${HERALD_SERVICES_DIR:-${TMPDIR:-/tmp}/herald-services}"
mkdir -p "$state_dir"

# port_open HOST PORT: a TCP connect that gives up after a second.
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_port() { # HOST PORT SECONDS
  local deadline=$((SECONDS + $3))
  while [ $SECONDS -lt "$deadline" ]; do
    port_open "$1" "$2" && return 0
    sleep 0.5
  done
  return 1
}

apt_updated=""
install() { # PACKAGE...
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1
}

failed=0
ensure() { # NAME PORT BINARY PACKAGES START-FUNCTION
  local name=$1 port=$2 bin=$3 pkgs=$4 startfn=$5
  if port_open 127.0.0.1 "$port"; then
    echo "$name: running on 127.0.0.1:$port"
    return
  fi
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    echo "$name: installing $pkgs"
    if ! install $pkgs; then
      echo "$name: FAILED (apt-get install $pkgs)"
      failed=1
      return
    fi
  fi
  $startfn
  if wait_port 127.0.0.1 "$port" 60; then
    echo "$name: started on 127.0.0.1:$port"
  else
    echo "$name: FAILED (not reachable on 127.0.0.1:$port; see $state_dir)"
    failed=1
  fi
}

start_redis() {
  mkdir -p "$state_dir/redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir "$state_dir/redis" --logfile "$state_dir/redis/redis.log" >/dev/null 2>&1 ||
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$state_dir/redis" --logfile "$state_dir/redis/redis.log" >/dev/null 2>&1
}

start_nats() {
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p "$state_dir/nats"
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$state_dir/nats" >"$state_dir/nats/nats.log" 2>&1 &
}

start_rabbitmq() {
  local bin
  bin=$(command -v rabbitmq-server || echo /usr/sbin/rabbitmq-server)
  $SUDO "$bin" -detached >"$state_dir/rabbitmq.log" 2>&1
}

for s in "${services[@]}"; do
  case "$s" in
    redis) ensure redis 6379 redis-server "redis-server redis-tools" start_redis
           # Cluster tests need redis-cli even when a server was already running.
           command -v redis-cli >/dev/null 2>&1 || install redis-tools || { echo "redis: FAILED (redis-tools)"; failed=1; } ;;
    nats) ensure nats 4222 nats-server nats-server start_nats ;;
    rabbitmq) ensure rabbitmq 5672 rabbitmq-server rabbitmq-server start_rabbitmq ;;
    *) echo "unknown service $s (want redis, nats or rabbitmq)"; failed=1 ;;
  esac
done
exit $failed
