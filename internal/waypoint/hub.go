package waypoint

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// key is what an event is indexed by before any payload member is looked at.
type key struct{ wallet, topic, state string }

// Waiter is one open stream's wish: the first event of key whose payload member field has the
// text value (and, when group is set, whose group_id is group).
type Waiter struct {
	key          key
	field, value string
	group        string
	lookBack     time.Duration

	ev     atomic.Pointer[Event]
	conn   net.Conn // poked when ev is set, so that its stream wakes from its read
	closed atomic.Bool
	pos    int // index in its list, for removal in O(1)
}

// NewWaiter describes a stream waiting for wallet, topic, state and payload[field] == value.
func NewWaiter(wallet, topic, state, field, value, group string, lookBack time.Duration) *Waiter {
	return &Waiter{key: key{wallet, canonicalTopic(topic), state}, field: field, value: value, group: group, lookBack: lookBack}
}

func (w *Waiter) matches(e *Event) bool {
	if w.group != "" && e.Group != w.group {
		return false
	}
	v, ok := member(e.Payload, w.field)
	return ok && string(v) == w.value
}

// aLongTimeAgo is a read deadline that has passed: setting it wakes a blocked Read at once.
var aLongTimeAgo = time.Unix(1, 0)

func (w *Waiter) wake() {
	if w.conn != nil {
		_ = w.conn.SetReadDeadline(aLongTimeAgo)
	}
}

// byKey holds the waiters of one key: by field name, then by the value they wait for. A key
// rarely has more than one or two field names in use, so an event looks up a handful of maps,
// whatever the number of waiters.
type byKey map[string]map[string][]*Waiter

// Hub matches events with waiters. One mutex covers the index and the replay window: a waiter
// either finds its event in the window or is indexed before the next event is looked at, so
// nothing falls between the two.
type Hub struct {
	mu      sync.Mutex
	waiters map[key]byKey
	n       int
	closed  bool

	// The replay window: every event of the last window, oldest first, and per key.
	window time.Duration
	max    int
	recent ring
	perKey map[key]*ring

	now func() time.Time
}

// NewHub keeps events for look_back up to window old, and at most max of them.
func NewHub(window time.Duration, max int) *Hub {
	return &Hub{waiters: map[key]byKey{}, perKey: map[key]*ring{}, window: window, max: max, now: time.Now}
}

// Wait returns the first event in the replay window that w waits for, or indexes w and returns
// nil; its event is then stored in w and w's connection woken. After Close it returns nil and
// w is marked closed.
func (h *Hub) Wait(w *Waiter) *Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		w.closed.Store(true)
		return nil
	}
	now := h.now()
	h.expire(now)
	if r := h.perKey[w.key]; r != nil && w.lookBack > 0 {
		from := now.Add(-w.lookBack)
		for i := 0; i < r.len(); i++ {
			if e := r.at(i); !e.At.Before(from) && w.matches(e) {
				return e
			}
		}
	}
	bk := h.waiters[w.key]
	if bk == nil {
		bk = byKey{}
		h.waiters[w.key] = bk
	}
	vals := bk[w.field]
	if vals == nil {
		vals = map[string][]*Waiter{}
		bk[w.field] = vals
	}
	list := vals[w.value]
	w.pos = len(list)
	vals[w.value] = append(list, w)
	h.n++
	return nil
}

// Cancel removes w from the index. It reports false when w was no longer there: its event came
// (or Close did) first, and the stream must answer it.
func (h *Hub) Cancel(w *Waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.ev.Load() != nil || w.closed.Load() {
		return false
	}
	h.remove(w)
	return true
}

// remove takes w out of its list, dropping maps left empty so that waiters come and go without
// the index growing.
func (h *Hub) remove(w *Waiter) {
	bk := h.waiters[w.key]
	vals := bk[w.field]
	list := vals[w.value]
	last := len(list) - 1
	if w.pos > last || list[w.pos] != w {
		return // not indexed
	}
	list[w.pos] = list[last]
	list[w.pos].pos = w.pos
	list[last] = nil
	list = list[:last]
	h.n--
	if len(list) > 0 {
		vals[w.value] = list
		return
	}
	delete(vals, w.value)
	if len(vals) > 0 {
		return
	}
	delete(bk, w.field)
	if len(bk) == 0 {
		delete(h.waiters, w.key)
	}
}

// Publish adds e to the replay window and answers every waiter it matches. It returns how many.
func (h *Hub) Publish(e *Event) int {
	var woken []*Waiter
	h.mu.Lock()
	if h.window > 0 {
		h.expire(h.now())
		h.recent.push(e)
		r := h.perKey[key{e.Wallet, e.Topic, e.State}]
		if r == nil {
			r = &ring{}
			h.perKey[key{e.Wallet, e.Topic, e.State}] = r
		}
		r.push(e)
		if h.recent.len() > h.max {
			h.drop()
		}
	}
	if bk := h.waiters[key{e.Wallet, e.Topic, e.State}]; bk != nil {
		for field, vals := range bk {
			v, ok := member(e.Payload, field)
			if !ok {
				continue
			}
			for _, w := range vals[string(v)] {
				if w.group == "" || w.group == e.Group {
					woken = append(woken, w)
				}
			}
		}
		for _, w := range woken {
			w.ev.Store(e)
			h.remove(w)
		}
	}
	h.mu.Unlock()
	for _, w := range woken {
		w.wake()
	}
	return len(woken)
}

// Open is the number of indexed waiters.
func (h *Hub) Open() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// Close wakes every waiter with no event, marked closed, and refuses new ones.
func (h *Hub) Close() {
	var all []*Waiter
	h.mu.Lock()
	h.closed = true
	for _, bk := range h.waiters {
		for _, vals := range bk {
			for _, list := range vals {
				all = append(all, list...)
			}
		}
	}
	for _, w := range all {
		w.closed.Store(true)
	}
	h.waiters = map[key]byKey{}
	h.n = 0
	h.mu.Unlock()
	for _, w := range all {
		w.wake()
	}
}

// expire drops the events older than the window.
func (h *Hub) expire(now time.Time) {
	from := now.Add(-h.window)
	for h.recent.len() > 0 && h.recent.at(0).At.Before(from) {
		h.drop()
	}
}

// drop removes the oldest event of the window, from the per-key ring too, where it is also the
// oldest: both rings are in arrival order.
func (h *Hub) drop() {
	e := h.recent.pop()
	k := key{e.Wallet, e.Topic, e.State}
	r := h.perKey[k]
	if r == nil {
		return
	}
	if r.len() > 0 && r.at(0) == e {
		r.pop()
	}
	if r.len() == 0 {
		delete(h.perKey, k)
	}
}

// ring is a FIFO of events that reuses its array as it is drained.
type ring struct {
	buf        []*Event
	head, size int
}

func (r *ring) len() int { return r.size }

func (r *ring) at(i int) *Event { return r.buf[(r.head+i)%len(r.buf)] }

func (r *ring) push(e *Event) {
	if r.size == len(r.buf) {
		n := max(2*len(r.buf), 4)
		buf := make([]*Event, n)
		for i := 0; i < r.size; i++ {
			buf[i] = r.at(i)
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = e
	r.size++
}

func (r *ring) pop() *Event {
	e := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return e
}
