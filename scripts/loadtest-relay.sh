#!/usr/bin/env bash
# The relay's load test, in one run on this machine:
#   1. the ceiling: loadtest/relay.js against loadtest/sink, a fasthttp server that answers 200 and
#      does nothing else, so that the load generator's own cost is on record beside the relay's;
#   2. the relay: a fresh Redis on a free port, one registered ACA-Py uid (kept fresh by a loop
#      standing in for a live instance), `herald relay`, and the same k6 script at the same rate.
# Afterwards it counts what landed in Redis: every 200 must be one entry on one
# <prefix>_inbound_<recipient key> list, and the pending counts must add up to the same number.
# Exits non-zero when k6's thresholds (0 errors, p99 <= 10 ms) fail against the relay or a message
# is missing.
#
#   RATE=20000 DURATION=10s KEYS=100 BATCH=10 scripts/loadtest-relay.sh
set -uo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-20000}
BATCH=${BATCH:-10}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-100}
K6=${K6:-bin/k6}
HERALD=${HERALD:-bin/herald}
SINK=${SINK:-bin/sink}
work=$(mktemp -d)

# shellcheck source=scripts/loadtest-lib.sh
. scripts/loadtest-lib.sh

# 1. The ceiling.
ceiling loadtest/relay.js -e KEYS="$KEYS"

# 2. The relay.
start_redis

# One ACA-Py instance as the plugin registers it (no keys yet), and its last access kept fresh
# the way a popping instance keeps it: otherwise every message would reassign its keys.
rcli hset uid_recip_keys_map loadtest-uid W10= >/dev/null
(while :; do rcli hset uid_last_access_map loadtest-uid "$(date +%Y-%m-%dT%H:%M:%SZ)" >/dev/null; sleep 1; done) &
pids+=($!)

http_port=$(free_port)
status_port=$(free_port)
REDIS_SERVER_URL="redis://127.0.0.1:$redis_port" TOPIC_PREFIX=acapy \
  INBOUND_TRANSPORT_CONFIG="[[\"http\",\"127.0.0.1\",$http_port]]" \
  STATUS_ENDPOINT_HOST=127.0.0.1 STATUS_ENDPOINT_PORT="$status_port" STATUS_ENDPOINT_API_KEY=loadtest \
  "$HERALD" relay >"$work/relay.log" 2>&1 &
relay_pid=$!
pids+=($relay_pid)
wait_http "http://127.0.0.1:$http_port/" || { echo "herald relay did not start:"; tail -5 "$work/relay.log"; exit 1; }

relay_cpu0=$(cpu_of "$relay_pid")
redis_cpu0=$(cpu_of "$redis_pid")
echo "== relay: $RATE requests/s for $DURATION over $KEYS recipient keys (Redis :$redis_port, relay :$http_port)"
run_k6 relay "http://127.0.0.1:$http_port/" loadtest/relay.js -e KEYS="$KEYS"
k6_status=$?
relay_cpu=$(echo "$(cpu_of "$relay_pid") - $relay_cpu0" | bc)
redis_cpu=$(echo "$(cpu_of "$redis_pid") - $redis_cpu0" | bc)
read -r requests rate p99 failed <<<"$(summary relay)"

entries=0
while read -r list; do
  [ -n "$list" ] && entries=$((entries + $(rcli llen "$list")))
done < <(rcli --scan --pattern 'acapy_inbound_*')
pending=$(rcli hvals uid_recip_key_pending_msg_count | awk '{ s += $1 } END { print s + 0 }')
curl -fs --max-time 10 -H 'access_token: loadtest' "http://127.0.0.1:$status_port/metrics" >"$work/metrics"
queued=$(awk '/^herald_relay_messages_total\{outcome="queued"/ { s += $2 } END { printf "%d", s }' "$work/metrics")
# The relay's own view: the histogram bucket holding the 99th percentile of book-and-queue time.
relay_p99=$(awk -F'[" ]' '/^herald_relay_queue_seconds_bucket/ { le[n] = $2; c[n++] = $NF }
  /^herald_relay_queue_seconds_count/ { total = $NF }
  END { for (i = 0; i < n; i++) if (c[i] >= 0.99 * total) { printf "%g ms", le[i] * 1000; exit } }' "$work/metrics")
scripts=$(rcli info commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_evalsha:/ { print $3 }')
rss=$(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$relay_pid/status")

echo
echo "relay load test, $(machine):"
echo "  offered $RATE/s for $DURATION in batches of $BATCH"
echo "  ceiling (k6 -> do-nothing server): $c_rate requests/s, p99 $c_p99 ms"
echo "  herald relay:                      $rate requests/s, p99 $p99 ms, $failed errors"
echo "  inside the relay, book and queue:  p99 <= $relay_p99 (its histogram)"
echo "  relay / ceiling: rate $(echo "scale=2; $rate / $c_rate" | bc)"
echo "  CPU per request: k6 $(per_req "$requests" "$(cat "$work/relay.cpu")") µs, relay $(per_req "$requests" "$relay_cpu") µs, Redis $(per_req "$requests" "$redis_cpu") µs"
echo "  bookkeeping script calls: ${scripts:-0} ($(echo "scale=1; $requests / ${scripts:-1}" | bc) messages per call); relay peak RSS $rss"
echo "  counted: k6 sent $requests, relay queued $queued, entries in Redis $entries, pending counts $pending"
status=0
if [ "$k6_status" -ne 0 ]; then
  echo "FAIL: k6 thresholds against the relay (0 errors, p99 <= 10 ms) not met"
  status=1
fi
if [ "$requests" != "$entries" ] || [ "$entries" != "$pending" ] || [ "$entries" != "$queued" ]; then
  echo "FAIL: every request must be exactly one entry in Redis"
  tail -20 "$work/relay.log"
  status=1
fi
[ $status -eq 0 ] && echo "loadtest: OK"
exit $status
