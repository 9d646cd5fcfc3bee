package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/redistest"
	"github.com/redis/rueidis"
)

// malformed returns a queue entry that can never be delivered, of one of several kinds, derived
// from a good entry.
func malformed(r *rand.Rand, good []byte, url string) string {
	switch r.IntN(10) {
	case 0: // cut short: the object is never closed
		return string(good[:1+r.IntN(len(good)-2)])
	case 1: // not JSON at all
		b := make([]byte, 1+r.IntN(64))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return "x" + string(b)
	case 2:
		return fmt.Sprintf(`{"service": {"url": %d}, "payload": "e30=", "headers": {}}`, r.IntN(1000))
	case 3:
		return fmt.Sprintf(`{"service": {"url": %q}, "payload": "!!not base64 %d!!", "headers": {}}`, url, r.IntN(1000))
	case 4:
		return fmt.Sprintf(`{"service": {"url": %q}, "headers": {"n": "%d"}}`, url, r.IntN(1000))
	case 5:
		return fmt.Sprintf(`{"payload": "e30=", "headers": {"n": "%d"}}`, r.IntN(1000))
	case 6:
		return fmt.Sprintf(`{"service": {"url": "ftp://files.example/%d"}, "payload": "e30=", "headers": {}}`, r.IntN(1000))
	case 7:
		return strings.Repeat("[", 100+r.IntN(1000))
	case 8:
		return string(good) + fmt.Sprintf(` trailing %d`, r.IntN(1000))
	default:
		return fmt.Sprintf(`{"service": {"url": %q}, "payload": "e30=", "headers": [%d]}`, url, r.IntN(1000))
	}
}

// TestMalformedMixedIn: 10,000 malformed entries among 100,000 good ones. Every good one is
// delivered once, every bad one lands in the dead-letter list with a reason, and the drain does
// not stall.
func TestMalformedMixedIn(t *testing.T) {
	t.Parallel()
	const good, bad = 100000, 10000
	url := redistest.Standalone(t).URL()
	c := client(t, url)
	ctx := context.Background()
	recv := newReceiver(t, good)
	keys := redisq.NewKeys("acapy_outbound", "acapy_outbound_retry", "")
	r := rand.New(rand.NewPCG(1, 2))
	headers := []engine.Header{{Name: []byte("Content-Type"), Value: []byte("application/json")}}
	badSet := map[string]bool{}
	var cmds rueidis.Commands
	var elems []string
	flush := func() {
		if len(elems) > 0 {
			cmds = append(cmds, c.B().Rpush().Key(keys.Queue).Element(elems...).Build())
			elems = nil
		}
		for _, res := range c.DoMulti(ctx, cmds...) {
			if err := res.Error(); err != nil {
				t.Fatal(err)
			}
		}
		cmds = cmds[:0]
	}
	for id := range good {
		entry := acapy.AppendOutbound(nil, recv.URL()+"/in", headers, fixture.Payload(nil, id, 300))
		elems = append(elems, string(entry))
		if id%(good/bad) == 0 {
			m := malformed(r, entry, recv.URL()+"/in")
			for badSet[m] { // each bad entry distinct, so that each can be found once
				m += " "
			}
			badSet[m] = true
			elems = append(elems, m)
		}
		if len(elems) >= 1000 {
			cmds = append(cmds, c.B().Rpush().Key(keys.Queue).Element(elems...).Build())
			elems = nil
			if len(cmds) == 16 {
				flush()
			}
		}
	}
	flush()

	start(t, referenceEnv(url, "acapy", freePort(t), "k"), "deliver")
	if !recv.WaitAll(60 * time.Second) {
		got, missing, dup := recv.Tally()
		t.Fatalf("good entries: %d received, %d missing, %d duplicated", got, missing, dup)
	}
	eventually(t, 30*time.Second, "every bad entry dead-lettered", func() bool { return llen(t, c, keys.Dead) == bad })
	if _, missing, dup := recv.Tally(); missing != 0 || dup != 0 {
		t.Fatalf("%d missing, %d duplicated", missing, dup)
	}
	dead, err := c.Do(ctx, c.B().Lrange().Key(keys.Dead).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, d := range dead {
		dl, err := acapy.ParseDeadLetter([]byte(d))
		if err != nil || dl.Reason == "" || !badSet[string(dl.Raw)] {
			t.Fatalf("dead-letter entry without a reason or not one of the bad entries: %.200s (%v)", d, err)
		}
		delete(badSet, string(dl.Raw))
		reasons[firstWords(dl.Reason)]++
	}
	if len(badSet) != 0 {
		t.Fatalf("%d bad entries not in the dead-letter list", len(badSet))
	}
	if n := llen(t, c, keys.Queue); n != 0 {
		t.Fatalf("%d entries left in the queue", n)
	}
	t.Logf("100,000 good delivered once; 10,000 bad dead-lettered; reasons: %v", reasons)
}

func firstWords(s string) string {
	f := strings.Fields(s)
	if len(f) > 4 {
		f = f[:4]
	}
	return strings.Join(f, " ")
}
