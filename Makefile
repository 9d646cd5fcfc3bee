# Herald. `make demo` and `make test` are all a newcomer needs; see README.md.
GO      ?= go
BIN     := bin/herald
PKGS    := ./...
BENCH_N ?= 200000

.PHONY: all build demo test vet fmt-check bench profile services clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/herald

services:
	bash scripts/services.sh redis

demo: services build
	./$(BIN) demo

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: services fmt-check vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# Drains BENCH_N prefilled 300-byte messages into a local fasthttp receiver and prints the rate.
bench: services
	HERALD_BENCH_N=$(BENCH_N) $(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/

# CPU and heap profiles of the at-least-once drain (the default mode), read with go tool pprof.
profile: services
	HERALD_BENCH_N=$(BENCH_N) $(GO) test -run '^$$' -bench 'Drain/at-least-once' -benchtime 1x -count 1 -timeout 30m \
		-cpuprofile profiles/drain-cpu.pprof -memprofile profiles/drain-heap.pprof ./bench/
	rm -f bench.test

clean:
	rm -rf bin
