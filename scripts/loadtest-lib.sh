# Shared by the load-test scripts: free ports, process cleanup, k6 runs and their summaries.
# Source it after setting work (a temporary directory) and K6.

free_port() {
  local p
  while :; do
    # Below the ephemeral range (32768-60999 on Linux), where outgoing connections take ports.
    p=$((10000 + RANDOM % 22000))
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null || { echo "$p"; return; }
  done
}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { # URL: up to 10 s
  for _ in $(seq 100); do curl -fs --max-time 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# CPU seconds (user + system) a process has used so far, from /proc.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# run_k6 NAME TARGET SCRIPT [-e K=V ...]: runs a k6 script at $RATE for $DURATION in groups of
# $BATCH, leaves the summary in $work/NAME.json and k6's CPU seconds in $work/NAME.cpu, and
# returns k6's exit status.
run_k6() {
  local status name=$1 target=$2 script=$3
  shift 3
  TIMEFORMAT='%U %S'
  exec 3>&1
  { time "$K6" run --quiet --summary-export "$work/$name.json" \
    -e TARGET="$target" -e RATE="$RATE" -e DURATION="$DURATION" -e BATCH="$BATCH" "$@" \
    "$script" 1>&3 2>&3; } 2>"$work/$name.time"
  status=$?
  exec 3>&-
  awk '{ print $1 + $2 }' "$work/$name.time" >"$work/$name.cpu"
  return $status
}

# summary NAME: "<requests> <rate> <p99 ms> <failed>" from a k6 summary export.
summary() {
  tr -d ' \n' <"$work/$1.json" | awk '
    function field(metric, name,   m) {
      if (!match($0, "\"" metric "\":\\{[^}]*\"" name "\":[0-9.e+-]+")) return 0
      m = substr($0, RSTART, RLENGTH); sub(/.*:/, "", m); return m
    }
    { printf "%d %.0f %.2f %d", field("http_reqs", "count"), field("http_reqs", "rate"),
        field("http_req_duration", "p\\(99\\)"), field("http_req_failed", "passes") }'
}

# ceiling SCRIPT [-e K=V ...]: runs SCRIPT against loadtest/sink (a do-nothing fasthttp
# server) and sets c_requests, c_rate and c_p99: what the load generator and the machine allow
# before any Herald work.
ceiling() {
  local port script=$1
  shift
  port=$(free_port)
  "$SINK" -addr "127.0.0.1:$port" >"$work/sink.log" 2>&1 &
  local sink=$!
  wait_http "http://127.0.0.1:$port/" || { echo "loadtest/sink did not start:"; cat "$work/sink.log"; exit 1; }
  echo "== ceiling: k6 against a do-nothing fasthttp server, $RATE requests/s for $DURATION"
  run_k6 ceiling "http://127.0.0.1:$port/" "$script" "$@" >/dev/null
  kill "$sink" 2>/dev/null
  wait "$sink" 2>/dev/null
  read -r c_requests c_rate c_p99 _ <<<"$(summary ceiling)"
  echo "ceiling: $c_requests requests, $c_rate/s, p99 $c_p99 ms, k6 CPU $(per_req "$c_requests" "$(cat "$work/ceiling.cpu")") µs per request"
}

# start_redis: a fresh redis-server on a free port, nothing persisted; sets redis_port, redis_pid
# and rcli, the redis-cli for it.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
  rcli ping >/dev/null 2>&1 || { echo "redis-server did not start on :$redis_port:"; tail -5 "$work/redis.log"; exit 1; }
}
rcli() { redis-cli -p "$redis_port" "$@"; }

# per_req REQUESTS SECONDS: CPU seconds as microseconds per request.
per_req() { echo "scale=1; $2 * 1000000 / ($1 + 1)" | bc; }

# machine: cores, CPU model and date, for the record.
machine() { echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(date -u +%Y-%m-%d)"; }
