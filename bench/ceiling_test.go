package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/heraldhq/herald/internal/fixture"
)

var requestsPerSec = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// ceiling measures how many 300-byte POSTs per second wrk gets through keep-alive connections
// into the same fasthttp receiver the drain benchmarks deliver to: the most any deliverer could
// reach on this machine. It returns 0 when wrk is not installed.
func ceiling(b *testing.B) float64 {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		fmt.Println("ceiling: wrk not installed (apt-get install wrk): not measured")
		return 0
	}
	recv, err := fixture.NewReceiver(1)
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	script := filepath.Join(b.TempDir(), "post.lua")
	body := string(fixture.Payload(nil, 0, 300))
	lua := fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/json\"\n", body)
	if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
		b.Fatal(err)
	}
	// Two threads and 256 connections: the cores and the concurrency Herald itself uses.
	out, err := exec.Command(wrk, "-t2", "-c256", "-d5s", "-s", script, recv.URL()+"/in").CombinedOutput()
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	m := requestsPerSec.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no Requests/sec in wrk output:\n%s", out)
	}
	r, _ := strconv.ParseFloat(string(m[1]), 64)
	fmt.Printf("ceiling: wrk -t2 -c256 POSTing 300-byte bodies into the receiver: %.0f req/s\n", r)
	return r
}
