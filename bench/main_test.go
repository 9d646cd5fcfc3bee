package bench

import (
	"os"
	"testing"

	"github.com/heraldhq/herald/internal/gctune"
)

// TestMain gives the in-process deliverer the GC settings `herald deliver` runs with.
func TestMain(m *testing.M) {
	gctune.Apply()
	os.Exit(m.Run())
}
