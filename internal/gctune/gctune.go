// Package gctune sets the garbage collector for Herald's long-running services. It is one
// function, shared by every command, so that they all leave GOGC and GOMEMLIMIT to the operator
// when set.
package gctune

import (
	"os"
	"runtime/debug"
)

// GC settings for the services. Their live heap is a few MiB (pooled messages and buffers), so
// Go's default GOGC=100 collects every few MiB allocated: at 20,000 msgs/s that is a cycle every
// half second, and each cycle's mark phase takes one of the two cores for a few milliseconds,
// which is where the slowest 1% of deliveries (and relay answers) came from. 400 makes cycles
// four times rarer at a cost of a few tens of MiB; the soft limit keeps a process with many
// large entries in flight from growing to five times its live heap.
const (
	gcPercent   = 400
	memoryLimit = 512 << 20
)

// Apply sets the services' GC settings, leaving alone any the operator set with GOGC or
// GOMEMLIMIT. Call it once at process start.
func Apply() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(memoryLimit)
	}
}
