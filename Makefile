# Herald. `make demo` and `make test` are all a newcomer needs; see README.md.
GO      ?= go
BIN     := bin/herald
PKGS    := ./...
BENCH_N ?= 200000
# Offered rates of the open-loop latency runs (10 s each, plus the floor's 10 s).
BENCH_RATES ?= 2000,5000,10000,20000

.PHONY: all build demo test vet fmt-check bench bench-brokers bench-check fuzz-check chaos profile services tools loadtest loadtest-waypoint clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/herald

services:
	bash scripts/services.sh redis nats rabbitmq

demo: services build
	./$(BIN) demo

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: services fmt-check vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# In one run: the ceiling (wrk POSTing into the receiver), then BENCH_N prefilled 300-byte messages
# drained into the same receiver in both delivery modes, then the herald binary's rate and peak RSS.
bench: services tools
	HERALD_BENCH_N=$(BENCH_N) HERALD_BENCH_RATES=$(BENCH_RATES) HERALD_BENCH_CHART=$(CURDIR)/bench/latency.svg \
		$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/

# Only the brokers' table (also part of `make bench`): each broker's drain and event routing rate
# beside Redis's, in one run.
bench-brokers: services
	$(GO) test -run '^$$' -bench 'Brokers' -benchtime 1x -count 1 -timeout 20m ./bench/

# CI's performance guard: zero allocations on the hot path, a drain floor, a p99 limit.
bench-check: services
	bash scripts/bench-check.sh

# The fault scenarios at the sizes issue 6 names (100,000 messages, a 60 s receiver outage), and
# the table of messages sent, delivered, duplicated, dead-lettered and lost. `make test` runs them
# shortened.
chaos: services build
	@mkdir -p bin; echo "running the fault scenarios (several minutes; full log in bin/chaos.log)"; \
	HERALD_CHAOS=full $(GO) test -count=1 -v -run '^TestChaos$$' -timeout 30m ./e2e/ >bin/chaos.log 2>&1; status=$$?; \
	grep -E '^(chaos,|\|)|^(--- FAIL|ok|FAIL)|lost' bin/chaos.log; exit $$status

# Every fuzz target for fifty thousand inputs (FUZZTIME=60s for the long run).
fuzz-check:
	bash scripts/fuzz-check.sh

# Load generators the benchmarks use, from Debian's packages.
tools:
	@for t in wrk curl; do command -v $$t >/dev/null 2>&1 || { echo "installing $$t"; apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq $$t >/dev/null 2>&1 || sudo apt-get install -y -qq $$t >/dev/null; }; done

# k6, built from source once (about two minutes) into bin/.
K6 := bin/k6
$(K6):
	@echo "building k6 v1.8.1 into bin/ (about two minutes, once)"
	GOBIN=$(CURDIR)/bin $(GO) install go.k6.io/k6@v1.8.1

# The relay and the events service under k6, each beside its ceiling (k6 against a do-nothing
# server) in the same run, then every message counted in Redis.
RELAY_RATE  ?= 20000
EVENTS_RATE ?= 15000
DURATION    ?= 10s
loadtest: services tools build $(K6)
	$(GO) build -o bin/sink ./loadtest/sink
	@status=0; \
	RATE=$(RELAY_RATE) DURATION=$(DURATION) bash scripts/loadtest-relay.sh || status=1; \
	RATE=$(EVENTS_RATE) DURATION=$(DURATION) bash scripts/loadtest-events.sh || status=1; \
	$(MAKE) --no-print-directory loadtest-waypoint || status=1; \
	exit $$status

# herald waypoint holding SSE_STREAMS streams open, their events published among SSE_NOISE others
# at SSE_RATE events/s through a JetStream stream of the run's own (k6 cannot hold SSE streams).
SSE_STREAMS ?= 10000
SSE_NOISE   ?= 100000
SSE_RATE    ?= 20000
loadtest-waypoint: services build
	$(GO) build -o bin/loadtest-waypoint ./loadtest/waypoint
	bin/loadtest-waypoint -herald bin/herald -streams $(SSE_STREAMS) -noise $(SSE_NOISE) -rate $(SSE_RATE)

# CPU and heap profiles of the at-least-once drain (the default mode), read with go tool pprof.
profile: services
	HERALD_BENCH_N=$(BENCH_N) HERALD_BENCH_ROUNDS=1 HERALD_BENCH_NO_CEILING=1 $(GO) test -run '^$$' -bench 'Drain/at-least-once' -benchtime 1x -count 1 -timeout 30m \
		-cpuprofile profiles/drain-cpu.pprof -memprofile profiles/drain-heap.pprof ./bench/
	rm -f bench.test

clean:
	rm -rf bin
