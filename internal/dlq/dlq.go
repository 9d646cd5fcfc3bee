// Package dlq reads and acts on a dead-letter list: what `herald dlq` shows an operator, puts back
// on the outbound queue or removes. Every action names entries by their exact bytes, so that it
// touches only what was listed even while deliverers append to the list.
package dlq

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/redis/rueidis"
)

// Item is one dead-letter entry.
type Item struct {
	// Index is the entry's position in the list when it was read (0 is the oldest).
	Index int
	// Raw is the dead-letter entry exactly as stored.
	Raw string
	// Entry is Raw decoded; Err says why when it could not be.
	Entry acapy.DeadLetter
	Err   error
}

// Filter selects entries; the zero Filter selects all.
type Filter struct {
	Reason    string        // the reason contains this (case-insensitive)
	Endpoint  string        // the receiver's URL contains this
	OlderThan time.Duration // failed at least this long ago
	NewerThan time.Duration // failed at most this long ago
	Now       time.Time     // the time ages are measured from; zero is time.Now
}

func (f Filter) match(it Item) bool {
	if it.Err != nil {
		// An entry that is not Herald's can only match the empty filter.
		return f == (Filter{Now: f.Now})
	}
	now := f.Now
	if now.IsZero() {
		now = time.Now()
	}
	switch {
	case f.Reason != "" && !strings.Contains(strings.ToLower(it.Entry.Reason), strings.ToLower(f.Reason)):
		return false
	case f.Endpoint != "" && !strings.Contains(string(it.Entry.URL), f.Endpoint):
		return false
	case f.OlderThan > 0 && now.Sub(it.Entry.At) < f.OlderThan:
		return false
	case f.NewerThan > 0 && now.Sub(it.Entry.At) > f.NewerThan:
		return false
	}
	return true
}

// page is how many entries one LRANGE reads.
const page = 1000

// List returns the entries of the list dead that f selects, oldest first.
func List(ctx context.Context, c rueidis.Client, dead string, f Filter) ([]Item, error) {
	var out []Item
	for start := int64(0); ; start += page {
		entries, err := c.Do(ctx, c.B().Lrange().Key(dead).Start(start).Stop(start+page-1).Build()).AsStrSlice()
		if err != nil {
			return out, fmt.Errorf("reading %s: %w", dead, err)
		}
		for i, raw := range entries {
			it := Item{Index: int(start) + i, Raw: raw}
			it.Entry, it.Err = acapy.ParseDeadLetter([]byte(raw))
			if f.match(it) {
				out = append(out, it)
			}
		}
		if len(entries) < page {
			return out, nil
		}
	}
}

// replayLua moves one dead-letter entry back to the queue in one step: it is pushed only if it
// was still in the dead-letter list, so a second replay of the same entries does nothing.
// KEYS: dead-letter list, queue. ARGV: the dead-letter entry, the entry to queue.
const replayLua = `
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
`

var replayScript = rueidis.NewLuaScript(replayLua)

// Requeued is the entry replay puts on the queue for it: the original outbound entry re-encoded
// in the reference format (service, payload, headers) without the retry count, so that it gets
// the whole retry schedule again; an entry that does not decode goes back as it was.
func Requeued(it Item) []byte {
	m := &engine.Message{}
	m.SetRaw(it.Entry.Raw)
	if err := acapy.DecodeOutbound(m); err != nil {
		return it.Entry.Raw
	}
	return acapy.AppendOutbound(nil, string(m.URL), m.Headers, m.Payload)
}

// Replay puts items back on queue and takes them off dead, and returns how many moved. An item no
// longer in dead (replayed or purged since it was listed) is skipped. When both keys share a
// cluster slot (the default dead-letter list does) each move is one atomic script; otherwise the
// entry is pushed first and removed after, so that a crash between the two duplicates it rather
// than losing it.
func Replay(ctx context.Context, c rueidis.Client, dead, queue string, items []Item) (int, error) {
	atomic := c.Mode() != rueidis.ClientModeCluster || redisq.Slot(dead) == redisq.Slot(queue)
	moved := 0
	for _, it := range items {
		if it.Err != nil {
			continue
		}
		entry := Requeued(it)
		if atomic {
			n, err := replayScript.Exec(ctx, c, []string{dead, queue}, []string{it.Raw, string(entry)}).AsInt64()
			if err != nil {
				return moved, fmt.Errorf("replaying entry %d: %w", it.Index, err)
			}
			moved += int(n)
			continue
		}
		// Still there? (LPOS answers nil when it is not.)
		if _, err := c.Do(ctx, c.B().Lpos().Key(dead).Element(it.Raw).Build()).AsInt64(); rueidis.IsRedisNil(err) {
			continue
		} else if err != nil {
			return moved, fmt.Errorf("replaying entry %d: %w", it.Index, err)
		}
		if err := c.Do(ctx, c.B().Rpush().Key(queue).Element(string(entry)).Build()).Error(); err != nil {
			return moved, fmt.Errorf("replaying entry %d: %w", it.Index, err)
		}
		if err := c.Do(ctx, c.B().Lrem().Key(dead).Count(1).Element(it.Raw).Build()).Error(); err != nil {
			return moved + 1, fmt.Errorf("entry %d is queued again but still in %s: %w", it.Index, dead, err)
		}
		moved++
	}
	return moved, nil
}

// Purge removes items from dead and returns how many went.
func Purge(ctx context.Context, c rueidis.Client, dead string, items []Item) (int, error) {
	removed := 0
	for _, it := range items {
		n, err := c.Do(ctx, c.B().Lrem().Key(dead).Count(1).Element(it.Raw).Build()).AsInt64()
		if err != nil {
			return removed, fmt.Errorf("purging entry %d: %w", it.Index, err)
		}
		removed += int(n)
	}
	return removed, nil
}
