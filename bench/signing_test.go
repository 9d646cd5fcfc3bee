package bench

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkSigningOverhead drains the same prefilled 300-byte messages with the herald binary
// twice per round, once plain and once with a HERALD_ENDPOINTS rule signing every delivery the
// Standard Webhooks way, and compares the CPU time the herald process used per message. The order
// alternates between rounds; the ratio reported is the median of the rounds'.
func BenchmarkSigningOverhead(b *testing.B) {
	rig := newBinaryRig(b)
	n := messages()
	run := func(round int, signed bool) (cpuPerMsg time.Duration, rate float64) {
		env := []string{"HERALD_LOG_LEVEL=warn"}
		if signed {
			// The receiver's URL is 127.0.0.1 on a port of its own: a rule for every endpoint.
			env = append(env, `HERALD_ENDPOINTS=[{"url": "", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]`)
		}
		d := rig.drain(b, fmt.Sprintf("sign%d%v", round, signed), n, env, nil)
		return d.cpu / time.Duration(n), float64(n) / d.took.Seconds()
	}
	var ratios []float64
	for i := 0; i < b.N; i++ {
		for r := range benchRounds() {
			var plain, signed time.Duration
			var plainRate, signedRate float64
			if r%2 == 0 {
				plain, plainRate = run(r, false)
				signed, signedRate = run(r, true)
			} else {
				signed, signedRate = run(r, true)
				plain, plainRate = run(r, false)
			}
			ratio := float64(signed) / float64(plain)
			ratios = append(ratios, ratio)
			fmt.Printf("signing round %d: plain %.2f µs CPU/msg (%.0f msgs/s), signed %.2f µs CPU/msg (%.0f msgs/s): signed / plain = %.3f\n",
				r+1, float64(plain)/1e3, plainRate, float64(signed)/1e3, signedRate, ratio)
		}
	}
	fmt.Printf("summary, median of %d rounds: herald CPU per message signed / plain = %.3f (target <= 1.10)\n", len(ratios), median(ratios))
	b.ReportMetric(median(ratios), "signed/plain-CPU")
	b.ReportMetric(0, "ns/op")
}
