#!/usr/bin/env bash
# The events service's load test, in one run on this machine: the ceiling (loadtest/events.js
# against loadtest/sink, a do-nothing server; it answers 200, which the script counts as failed,
# so only its rate and latency matter), then `herald events` on a fresh Redis with the default
# topic maps and the same script at the same rate. Each 202 must be three entries in Redis (the
# webhook list, the record-with-state list and the record list of its wallet).
# Exits non-zero when k6's thresholds (0 errors, p99 <= 10 ms) fail or an entry is missing.
#
#   RATE=15000 DURATION=10s BATCH=10 scripts/loadtest-events.sh
set -uo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-15000}
BATCH=${BATCH:-10}
DURATION=${DURATION:-10s}
K6=${K6:-bin/k6}
HERALD=${HERALD:-bin/herald}
SINK=${SINK:-bin/sink}
work=$(mktemp -d)
# shellcheck source=scripts/loadtest-lib.sh
. scripts/loadtest-lib.sh

ceiling loadtest/events.js

start_redis

http_port=$(free_port)
status_port=$(free_port)
REDIS_SERVER_URL="redis://127.0.0.1:$redis_port" HERALD_LISTEN="127.0.0.1:$http_port" \
  STATUS_ENDPOINT_HOST=127.0.0.1 STATUS_ENDPOINT_PORT="$status_port" STATUS_ENDPOINT_API_KEY=loadtest \
  "$HERALD" events >"$work/events.log" 2>&1 &
events_pid=$!
pids+=($events_pid)
for _ in $(seq 100); do curl -fs --max-time 1 -H 'access_token: loadtest' "http://127.0.0.1:$status_port/status/ready" >/dev/null 2>&1 && break; sleep 0.1; done

events_cpu0=$(cpu_of "$events_pid")
redis_cpu0=$(cpu_of "$redis_pid")
echo "== herald events: $RATE webhook posts/s for $DURATION (Redis :$redis_port, events :$http_port)"
run_k6 events "http://127.0.0.1:$http_port" loadtest/events.js
k6_status=$?
events_cpu=$(echo "$(cpu_of "$events_pid") - $events_cpu0" | bc)
redis_cpu=$(echo "$(cpu_of "$redis_pid") - $redis_cpu0" | bc)
read -r requests rate p99 failed <<<"$(summary events)"

entries=0
while read -r list; do
  [ -n "$list" ] && entries=$((entries + $(rcli llen "$list")))
done < <(rcli --scan --pattern 'acapy-*')
rss=$(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$events_pid/status")

echo
echo "events load test, $(machine):"
echo "  offered $RATE/s for $DURATION in batches of $BATCH"
echo "  ceiling (k6 -> do-nothing server): $c_rate requests/s, p99 $c_p99 ms"
echo "  herald events:                     $rate requests/s, p99 $p99 ms, $failed errors"
echo "  events / ceiling: rate $(echo "scale=2; $rate / $c_rate" | bc)"
echo "  CPU per request: k6 $(per_req "$requests" "$(cat "$work/events.cpu")") µs, herald events $(per_req "$requests" "$events_cpu") µs, Redis $(per_req "$requests" "$redis_cpu") µs; peak RSS $rss"
echo "  counted: k6 sent $requests, entries in Redis $entries (want $((3 * requests)))"
status=0
if [ "$k6_status" -ne 0 ]; then
  echo "FAIL: k6 thresholds against herald events (0 errors, p99 <= 10 ms) not met"
  status=1
fi
if [ "$entries" != "$((3 * requests))" ]; then
  echo "FAIL: every post must be three entries in Redis"
  tail -20 "$work/events.log"
  status=1
fi
[ $status -eq 0 ] && echo "loadtest: OK"
exit $status
