#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME (default 50000x, fifty thousand inputs each): CI's check
# that the decoders of outside bytes still survive random inputs. `FUZZTIME=60s scripts/fuzz-check.sh`
# or `FUZZTIME=2000000x ...` is the longer run. A crash leaves its input under the package's
# testdata/fuzz/, where it then stays as a regression seed.
#
# The default is a count, not a duration: with a duration, Go 1.26's fuzzing coordinator can report
# a bare "context deadline exceeded" failure when the time runs out on a loaded machine, with no
# failing input (golang/go#75804, fixed in Go 1.27). A count never arms that deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-50000x}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    printf '%-28s %s ... ' "$target" "${pkg#github.com/heraldhq/herald/}"
    # Minimizing a new input may otherwise take a minute of the run, with no fuzzing meanwhile.
    if out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 5s "$pkg" 2>&1); then
      echo "ok ($(echo "$out" | grep -o 'execs: [0-9]*' | tail -1))"
    else
      echo "FAIL"
      echo "$out" | tail -20
      exit 1
    fi
  done
done
echo "fuzz-check: OK"
