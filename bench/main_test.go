package bench

import (
	"os"
	"testing"

	"github.com/heraldhq/herald/internal/deliver"
)

// TestMain gives the in-process deliverer the GC settings `herald deliver` runs with.
func TestMain(m *testing.M) {
	deliver.TuneGC()
	os.Exit(m.Run())
}
