package deliver

import (
	"os"
	"runtime/debug"
)

// GC settings for a deliverer. Its live heap is a few MiB (pooled messages and buffers), so Go's
// default GOGC=100 collects every few MiB allocated: at 20,000 msgs/s that is a cycle every
// half second, and each cycle's mark phase takes one of the two cores for a few milliseconds,
// which is where the slowest 1% of deliveries came from. 400 makes cycles four times rarer at a
// cost of a few tens of MiB; the soft limit keeps a deliverer with many large entries in flight
// from growing to five times its live heap.
const (
	gcPercent   = 400
	memoryLimit = 512 << 20
)

// TuneGC applies the deliverer's GC settings, leaving alone any the operator set with GOGC or
// GOMEMLIMIT. Call it once at process start.
func TuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(memoryLimit)
	}
}
