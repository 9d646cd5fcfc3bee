#!/usr/bin/env bash
# CI's performance guard, under two minutes: the designated hot-path micro-benchmarks must not
# allocate, a short drain must stay above a generous floor, and the p99 latency at a low rate must
# stay under a generous limit. Thresholds are loose on purpose: CI machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== allocations of the per-message steps (must be 0)"
out=$(go test -run '^$' -bench 'DecodeOutbound|AppendRetryMember|AppendOutbound|BuildRequest|AppendRequest|ResponseReader|ObserverHotPath|RouterDefaultMap|RouterUncached|TemplateAppend|AppendEventPayload|Route$|Admit' \
  -benchmem -benchtime 20000x ./engine/ ./internal/acapy/ ./internal/sink/ ./internal/metrics/ ./internal/events/ ./internal/endpoint/)
echo "$out" | grep '^Benchmark'
allocating=$(echo "$out" | awk '/^Benchmark/ { for (i = 2; i <= NF; i++) if ($i == "allocs/op" && $(i-1) != "0") print $1 " " $(i-1) " allocs/op" }')
if [ -n "$allocating" ]; then
  echo "FAIL: a hot-path step allocates:"
  echo "$allocating"
  exit 1
fi

echo "== short drain: 20,000 messages, floor 10,000 msgs/s"
HERALD_BENCH_N=20000 HERALD_BENCH_NO_CEILING=1 HERALD_BENCH_ROUNDS=1 HERALD_BENCH_MIN_RATE=10000 \
  go test -run '^$' -bench 'Drain$' -benchtime 1x -count 1 ./bench/ | grep -E 'drained|round|FAIL|^ok'

echo "== latency at 2,000 msgs/s for 5 s: p99 at most 20 ms"
HERALD_BENCH_RATES=2000 HERALD_BENCH_SECONDS=5 HERALD_BENCH_ROUNDS=1 HERALD_BENCH_MAX_P99_MS=20 \
  go test -run '^$' -bench 'Latency' -benchtime 1x -count 1 ./bench/ | grep -E 'latency at|FAIL|^ok'
echo "bench-check: OK"
