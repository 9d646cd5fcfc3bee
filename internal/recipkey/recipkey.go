// Package recipkey shares inbound work between ACA-Py instances the way the redis_events plugin
// does: each recipient key is assigned to one registered instance (round robin), the keys of an
// instance that has gone silent with messages pending move to another, and every queued message
// counts as pending for its instance. The reference does this in a dozen round trips with races
// between relays; here each message's bookkeeping is atomic, inside one server-side script call
// that messages arriving at the same moment share.
package recipkey

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// The reference's key names. ACA-Py instances read and write them under these names, so they
// cannot carry a hash tag.
const (
	KeyUIDMap     = "recip_key_uid_map"               // recipient key -> instance uid
	UIDKeysMap    = "uid_recip_keys_map"              // uid -> base64url(JSON list of recipient keys)
	PendingMap    = "uid_recip_key_pending_msg_count" // "<uid>_<recipient key>" -> messages not yet popped
	LastAccessMap = "uid_last_access_map"             // uid -> local time of its last pop, %Y-%m-%dT%H:%M:%SZ
	RoundRobinKey = "round_robin_iterator"            // index of the next uid to assign
)

// Keys lists the bookkeeping keys, for cluster placement checks.
var Keys = []string{KeyUIDMap, UIDKeysMap, PendingMap, LastAccessMap, RoundRobinKey}

// DefaultStale is the reference's silence after which an instance's keys may move.
const DefaultStale = 15 * time.Second

// ErrNoInstance is returned when no ACA-Py instance has registered: nobody would read the message.
var ErrNoInstance = errors.New("no ACA-Py instance has registered in " + UIDKeysMap + " (is ACA-Py running with the redis_queue inbound transport?)")

// Assigner runs the bookkeeping.
type Assigner struct {
	c       rueidis.Client
	script  *rueidis.Lua
	stale   time.Duration
	now     func() time.Time
	cluster bool

	mu       sync.Mutex
	queue    []*call // messages waiting for the next script call
	flushing int     // callers committing batches right now
}

// New returns an Assigner. On a Redis Cluster the five bookkeeping keys must be served by one
// node (see Placement); the script then runs there with the allow-cross-slot-keys flag.
func New(c rueidis.Client, stale time.Duration) *Assigner {
	if stale <= 0 {
		stale = DefaultStale
	}
	s := assignLua
	if c.Mode() == rueidis.ClientModeCluster {
		s = "#!lua flags=allow-cross-slot-keys\n" + s
	}
	cluster := c.Mode() == rueidis.ClientModeCluster
	return &Assigner{c: c, script: rueidis.NewLuaScript(s), stale: stale, now: time.Now, cluster: cluster}
}

// Assign records one message for recipKey and returns the uid of the instance that owns it.
func (a *Assigner) Assign(ctx context.Context, recipKey string) (string, error) {
	calls := [1]*call{{key: recipKey}}
	a.exec(ctx, calls[:], false)
	return calls[0].uid, calls[0].err
}

// Queue records one message for recipKey and RPUSHes entry to the list <topic>_<recipKey>, the
// list the owning instance pops. The bookkeeping comes first, as in the reference, so a message
// is never in a list that no instance owns.
//
// Concurrent calls are committed together: while one script call is in flight, the messages that
// arrive meanwhile gather and go in the next, one call for all of them. A lone message goes at
// once; under load Redis runs one script per batch instead of one per message. On a standalone
// Redis the script also pushes the entries; on a cluster the lists live on other nodes, so the
// pushes follow the script in one pipelined round. Once handed over, a message is committed or
// fails within flushTimeout whatever happens to ctx, so that an answer never contradicts Redis.
func (a *Assigner) Queue(_ context.Context, topic, recipKey string, entry []byte) error {
	c, _ := callPool.Get().(*call)
	if c == nil {
		c = &call{done: make(chan struct{}, 1)}
	}
	c.key, c.list, c.entry = recipKey, topic+"_"+recipKey, entry
	a.mu.Lock()
	a.queue = append(a.queue, c)
	lead := a.flushing < maxFlushers
	if lead {
		a.flushing++
	}
	a.mu.Unlock()
	if lead {
		a.flush(c)
	}
	if !c.finished {
		<-c.done
	}
	err := c.err
	*c = call{done: c.done}
	callPool.Put(c)
	return err
}

// maxFlushers bounds the script calls in flight at once; more callers only wait for the next.
const maxFlushers = 2

// maxBatch bounds the messages of one script call.
const maxBatch = 128

type call struct {
	key, list string
	entry     []byte
	uid       string
	err       error
	done      chan struct{} // signalled when another caller's flush committed this message
	finished  bool          // committed by its own caller's flush
}

var callPool sync.Pool

// flush commits what is queued, batch after batch. A caller flushing for its own message (own)
// stops once that message is done and leaves whatever came meanwhile to a goroutine, so that its
// request never waits for other requests' batches; that goroutine runs until the queue is empty.
func (a *Assigner) flush(own *call) {
	var batch []*call
	for {
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.flushing--
			a.mu.Unlock()
			return
		}
		if own != nil && own.finished {
			a.mu.Unlock()
			go a.flush(nil)
			return
		}
		n := min(len(a.queue), maxBatch)
		batch = append(batch[:0], a.queue[:n]...)
		rest := copy(a.queue, a.queue[n:])
		clear(a.queue[rest:])
		a.queue = a.queue[:rest]
		a.mu.Unlock()

		// The batch carries other callers' messages: it is not tied to any one request.
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		a.exec(ctx, batch, true)
		cancel()
		for _, c := range batch {
			if c == own {
				c.finished = true
				continue
			}
			c.done <- struct{}{}
		}
	}
}

// flushTimeout bounds one batch's Redis calls.
const flushTimeout = 10 * time.Second

// exec runs the script for calls and sets each call's uid or error; with push the entries are
// queued too.
func (a *Assigner) exec(ctx context.Context, calls []*call, push bool) {
	keys := make([]string, 1, 1+len(calls))
	keys[0] = KeyUIDMap
	args := make([]string, 0, 7+2*len(calls))
	pushFlag := "0"
	if push && !a.cluster {
		pushFlag = "1"
	}
	args = append(args, UIDKeysMap, PendingMap, LastAccessMap, RoundRobinKey,
		strconv.FormatInt(localSeconds(a.now()), 10), strconv.FormatInt(int64(a.stale/time.Second), 10), pushFlag)
	for _, c := range calls {
		if pushFlag == "1" {
			keys = append(keys, c.list)
		}
		args = append(args, c.key, rueidis.BinaryString(c.entry))
	}
	replies, err := a.script.Exec(ctx, a.c, keys, args).ToArray()
	if err == nil && len(replies) != len(calls) {
		err = fmt.Errorf("bookkeeping script answered %d results for %d messages", len(replies), len(calls))
	}
	if err != nil {
		for _, c := range calls {
			c.err = err
		}
		return
	}
	var cmds rueidis.Commands
	for i, c := range calls {
		uid, err := replies[i].ToString()
		switch {
		case rueidis.IsRedisNil(err):
			c.err = ErrNoInstance
		case err != nil:
			c.err = err
		default:
			c.uid = uid
			if push && a.cluster {
				cmds = append(cmds, a.c.B().Rpush().Key(c.list).Element(rueidis.BinaryString(c.entry)).Build())
			}
		}
	}
	if len(cmds) == 0 {
		return
	}
	// Cluster: the pushes of the messages whose bookkeeping succeeded, pipelined per node.
	results := a.c.DoMulti(ctx, cmds...)
	j := 0
	for _, c := range calls {
		if c.err == nil {
			c.err = results[j].Error()
			j++
		}
	}
}

// localSeconds reads t's local wall clock as if it were UTC: the reference stores naive local
// times, and the script compares them with this.
func localSeconds(t time.Time) int64 {
	_, off := t.Zone()
	return t.Unix() + int64(off)
}

// FormatAccess is how ACA-Py writes an instance's last access (local time, a literal Z).
func FormatAccess(t time.Time) string { return t.Format("2006-01-02T15:04:05Z") }

// assignLua is the bookkeeping script; assign.lua says what it takes and answers.
//
//go:embed assign.lua
var assignLua string
