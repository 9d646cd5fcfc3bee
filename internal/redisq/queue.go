package redisq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/redis/rueidis"
)

// Mode selects the delivery guarantee of a Queue.
type Mode int

const (
	// AtLeastOnce moves taken entries into a per-instance in-flight hash in the same step that
	// takes them and removes them only once settled; a dead instance's entries are returned to
	// the queue by the survivors. A crash duplicates at worst.
	AtLeastOnce Mode = iota
	// AtMostOnce pops entries like the reference deliverer (BLPOP): a crash loses what the
	// instance held. Kept for comparison and for operators who ask for it.
	AtMostOnce
)

// ParseMode reads "at-least-once" or "at-most-once".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "at-least-once", "":
		return AtLeastOnce, nil
	case "at-most-once":
		return AtMostOnce, nil
	}
	return 0, fmt.Errorf("unknown delivery mode %q (want at-least-once or at-most-once)", s)
}

// String names the mode as ParseMode reads it.
func (m Mode) String() string {
	if m == AtMostOnce {
		return "at-most-once"
	}
	return "at-least-once"
}

// Options configure a Queue.
type Options struct {
	Keys Keys
	Mode Mode
	// Instance names this process in lease and in-flight keys; random when empty.
	Instance string
	// Lease is how long an instance may stay silent before its in-flight messages are returned
	// to the queue. Default 15 s.
	Lease time.Duration
	// EncodeRetry appends the retry set member of m for its retries-th retry.
	EncodeRetry func(dst []byte, m *engine.Message, retries int) []byte
	// EncodeDead appends the dead-letter entry of m.
	EncodeDead func(dst []byte, m *engine.Message, f engine.Failure, instance string, at time.Time) []byte
	// PumpBatch is the most retry members moved per pump step. Default 100.
	PumpBatch int
	Log       *slog.Logger
}

// Queue is an engine.Source (and the retry pump and reaper behind it) over Redis lists.
type Queue struct {
	c        rueidis.Client
	o        Options
	inflight string
	staging  string
	deadSame bool // the dead list shares the queue's slot: dead-lettering is one script
	acks     *acker
	seq      atomic.Uint64 // next in-flight sequence number
	// short: the last take found fewer entries than it asked for, so the queue is probably
	// empty and the next take goes straight to the wait.
	short atomic.Bool

	// Takes that failed after being sent may still have run: their entries would then sit in
	// this instance's in-flight hash with nobody delivering them, and, since the instance is
	// alive and renews its lease, no reaper returning them. Their sequence numbers are kept here
	// and given back to the queue (if they are in flight) before the next take.
	orphanMu sync.Mutex
	orphans  []seqRange
	orphaned atomic.Bool

	bufs sync.Pool
}

// seqRange is the sequence numbers a take would have used: first .. first+n-1.
type seqRange struct {
	first uint64
	n     int
}

// NewInstanceID returns a short random instance name.
func NewInstanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// New returns a Queue on client. Call Run to start its lease, reaper and retry pump.
func New(client rueidis.Client, o Options) *Queue {
	if o.Instance == "" {
		o.Instance = NewInstanceID()
	}
	if o.Lease <= 0 {
		o.Lease = 15 * time.Second
	}
	if o.PumpBatch <= 0 {
		o.PumpBatch = 100
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	q := &Queue{
		c:        client,
		o:        o,
		inflight: o.Keys.Inflight(o.Instance),
		staging:  o.Keys.Staging(o.Instance),
		deadSame: Slot(o.Keys.Dead) == Slot(o.Keys.Queue),
	}
	q.acks = newAcker(client, q.inflight, o.Log)
	return q
}

// Instance is the name this queue registers its lease under.
func (q *Queue) Instance() string { return q.o.Instance }

// InflightKey is this instance's in-flight hash (sequence number -> entry).
func (q *Queue) InflightKey() string { return q.inflight }

// leaseExpiry is when a lease renewed now runs out, in Unix milliseconds.
func (q *Queue) leaseExpiry() int64 { return time.Now().Add(q.o.Lease).UnixMilli() }

// Take implements engine.Source.
func (q *Queue) Take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	if q.o.Mode == AtMostOnce {
		return q.takeAtMostOnce(ctx, dst, n)
	}
	if q.orphaned.Load() {
		if err := q.returnOrphans(ctx); err != nil {
			return dst, err
		}
	}
	if !q.short.Load() {
		dst, took, err := q.take(ctx, dst, n)
		q.short.Store(took < n)
		if err != nil || took > 0 {
			return dst, err
		}
	}
	// Nothing queued: wait on the server, not in a loop. BLMOVE from the queue onto its own
	// head returns as soon as an entry arrives and leaves it where it was, so waiting takes
	// nothing out of the queue. The take script is pipelined behind it on the same blocking
	// connection, so Redis runs it the moment the wait ends: no extra round trip.
	first := q.seq.Add(uint64(n)) - uint64(n)
	resps := q.c.DoMulti(ctx,
		q.c.B().Blmove().Source(q.o.Keys.Queue).Destination(q.o.Keys.Queue).Left().Left().Timeout(1).Build(),
		q.c.B().Evalsha().Sha1(takeSHA).Numkeys(3).Key(q.o.Keys.Queue, q.inflight, q.o.Keys.leases).
			Arg(strconv.Itoa(n), q.o.Instance, strconv.FormatInt(q.leaseExpiry(), 10), strconv.FormatUint(first, 10)).Build())
	if err := resps[0].Error(); err != nil && !rueidis.IsRedisNil(err) {
		q.noteFailedTake(first, n)
		return dst, err
	}
	items, err := resps[1].ToArray()
	if err != nil {
		if re, ok := rueidis.IsRedisErr(err); ok && re.IsNoScript() {
			// A restarted server forgot the script: the plain path loads it again.
			dst, _, err = q.take(ctx, dst, n)
			return dst, err
		}
		q.noteFailedTake(first, n)
		return dst, err
	}
	q.short.Store(len(items) < n)
	return q.taken(dst, items, first)
}

// take runs the take script once and appends what it moved in flight.
func (q *Queue) take(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, int, error) {
	first := q.seq.Add(uint64(n)) - uint64(n)
	items, err := takeScript.Exec(ctx, q.c,
		[]string{q.o.Keys.Queue, q.inflight, q.o.Keys.leases},
		[]string{strconv.Itoa(n), q.o.Instance, strconv.FormatInt(q.leaseExpiry(), 10),
			strconv.FormatUint(first, 10)}).ToArray()
	if err != nil {
		q.noteFailedTake(first, n)
		return dst, 0, err
	}
	start := len(dst)
	dst, err = q.taken(dst, items, first)
	return dst, len(dst) - start, err
}

// noteFailedTake remembers the sequence numbers of a take whose answer did not come back.
func (q *Queue) noteFailedTake(first uint64, n int) {
	q.orphanMu.Lock()
	q.orphans = append(q.orphans, seqRange{first, n})
	q.orphanMu.Unlock()
	q.orphaned.Store(true)
}

// returnOrphans puts back at the queue's head whatever failed takes left in this instance's
// in-flight hash. The release script skips numbers that are not there, so a take that never ran
// costs nothing.
func (q *Queue) returnOrphans(ctx context.Context) error {
	q.orphanMu.Lock()
	ranges := append([]seqRange(nil), q.orphans...)
	q.orphanMu.Unlock()
	var args []string
	for _, r := range ranges {
		for i := range r.n {
			args = append(args, strconv.FormatUint(r.first+uint64(i), 10))
		}
	}
	n, err := releaseScript.Exec(ctx, q.c, []string{q.o.Keys.Queue, q.inflight}, args).AsInt64()
	if err != nil {
		return err
	}
	q.orphanMu.Lock()
	q.orphans = q.orphans[len(ranges):]
	q.orphaned.Store(len(q.orphans) > 0)
	q.orphanMu.Unlock()
	if n > 0 {
		q.o.Log.Warn("a take's answer was lost; its entries went back to the queue", "count", n)
	}
	return nil
}

// taken appends the entries a take script returned, numbered from first.
func (q *Queue) taken(dst []*engine.Message, items []rueidis.RedisMessage, first uint64) ([]*engine.Message, error) {
	start := len(dst)
	dst, err := appendMessages(dst, items)
	for i, m := range dst[start:] {
		m.Token = first + uint64(i)
	}
	return dst, err
}

func (q *Queue) takeAtMostOnce(ctx context.Context, dst []*engine.Message, n int) ([]*engine.Message, error) {
	items, err := q.c.Do(ctx, q.c.B().Lpop().Key(q.o.Keys.Queue).Count(int64(n)).Build()).ToArray()
	if err != nil && !rueidis.IsRedisNil(err) {
		return dst, err
	}
	if len(items) > 0 {
		return appendMessages(dst, items)
	}
	kv, err := q.c.Do(ctx, q.c.B().Blmpop().Timeout(1).Numkeys(1).Key(q.o.Keys.Queue).
		Left().Count(int64(n)).Build()).AsLMPop()
	if rueidis.IsRedisNil(err) {
		return dst, nil
	}
	if err != nil {
		return dst, err
	}
	for _, v := range kv.Values {
		dst = append(dst, newMessage(v))
	}
	return dst, nil
}

func appendMessages(dst []*engine.Message, items []rueidis.RedisMessage) ([]*engine.Message, error) {
	for i := range items {
		s, err := items[i].ToString()
		if err != nil {
			return dst, fmt.Errorf("unexpected reply in batch: %w", err)
		}
		dst = append(dst, newMessage(s))
	}
	return dst, nil
}

func newMessage(raw string) *engine.Message {
	m := engine.GetMessage()
	m.Raw = append(m.Raw[:0], raw...)
	m.TakenAt = time.Now().UnixNano()
	return m
}

// Ack implements engine.Source: the delivered entry leaves the in-flight hash. The removal is
// batched with other workers' and applied in the background by Run (or by Flush); until then the
// entry stays in flight, so a crash before it redelivers the message rather than losing it.
func (q *Queue) Ack(ctx context.Context, m *engine.Message) error {
	if q.o.Mode == AtLeastOnce {
		q.acks.add(m.Token)
	}
	return nil
}

// Flush applies the acknowledgments made so far. Run does this continuously; Close does it last.
func (q *Queue) Flush(ctx context.Context) error { return q.acks.flush(ctx) }

// Retry implements engine.Source. The member is added to the retry set before the entry leaves
// in-flight: a crash in between duplicates it, never loses it. The two keys are fixed by ACA-Py
// and may live on different cluster nodes, so they cannot be one script.
func (q *Queue) Retry(ctx context.Context, m *engine.Message, retries int, delay time.Duration) error {
	buf := q.getBuf()
	defer q.putBuf(buf)
	*buf = q.o.EncodeRetry((*buf)[:0], m, retries)
	score := float64(time.Now().Add(delay).Unix()) // int(now + delay), as the reference scores
	err := q.c.Do(ctx, q.c.B().Zadd().Key(q.o.Keys.RetrySet).ScoreMember().
		ScoreMember(score, rueidis.BinaryString(*buf)).Build()).Error()
	if err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// DeadLetter implements engine.Source.
func (q *Queue) DeadLetter(ctx context.Context, m *engine.Message, f engine.Failure) error {
	buf := q.getBuf()
	defer q.putBuf(buf)
	*buf = q.o.EncodeDead((*buf)[:0], m, f, q.o.Instance, time.Now())
	entry := rueidis.BinaryString(*buf)
	if q.o.Mode == AtLeastOnce && q.deadSame {
		return deadScript.Exec(ctx, q.c, []string{q.o.Keys.Dead, q.inflight},
			[]string{entry, strconv.FormatUint(m.Token, 10)}).Error()
	}
	if err := q.c.Do(ctx, q.c.B().Rpush().Key(q.o.Keys.Dead).Element(entry).Build()).Error(); err != nil {
		return err
	}
	return q.Ack(ctx, m)
}

// Release implements engine.Source: unstarted entries go back to the queue's head in order.
func (q *Queue) Release(ctx context.Context, ms []*engine.Message) error {
	if len(ms) == 0 {
		return nil
	}
	args := make([]string, len(ms))
	if q.o.Mode == AtMostOnce {
		for i, m := range ms {
			args[i] = string(m.Raw)
		}
		// Reversed so that LPUSH leaves them in their original order.
		for i, j := 0, len(args)-1; i < j; i, j = i+1, j-1 {
			args[i], args[j] = args[j], args[i]
		}
		return q.c.Do(ctx, q.c.B().Lpush().Key(q.o.Keys.Queue).Element(args...).Build()).Error()
	}
	for i, m := range ms {
		args[i] = strconv.FormatUint(m.Token, 10)
	}
	return releaseScript.Exec(ctx, q.c, []string{q.o.Keys.Queue, q.inflight}, args).Error()
}

func (q *Queue) getBuf() *[]byte {
	if v := q.bufs.Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, 0, 1024)
	return &b
}

func (q *Queue) putBuf(b *[]byte) { q.bufs.Put(b) }

// Depth reports the lengths of the queue and the retry set, for metrics.
func (q *Queue) Depth(ctx context.Context) (queue, retry, inflight int64, err error) {
	cmds := []rueidis.Completed{
		q.c.B().Llen().Key(q.o.Keys.Queue).Build(),
		q.c.B().Zcard().Key(q.o.Keys.RetrySet).Build(),
		q.c.B().Hlen().Key(q.inflight).Build(),
	}
	rs := q.c.DoMulti(ctx, cmds...)
	var out [3]int64
	for i, r := range rs {
		if out[i], err = r.AsInt64(); err != nil {
			return 0, 0, 0, err
		}
	}
	return out[0], out[1], out[2], nil
}

// Ping checks that every node answers (every primary of a cluster, as the reference's liveness
// check does), for the liveness endpoint.
func (q *Queue) Ping(ctx context.Context) error { return PingAll(ctx, q.c) }

// Run keeps the lease alive, returns the in-flight messages of dead instances and pumps due
// retries back to the queue until ctx ends. Redis errors are logged and retried, never fatal.
func (q *Queue) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); q.acks.run(ctx) }()
	go func() { defer wg.Done(); q.leaseLoop(ctx) }()
	go func() { defer wg.Done(); q.pumpLoop(ctx) }()
	wg.Wait()
}

// Start is a service's life cycle of the queue in one call: it registers the instance, retrying
// while Redis refuses until ctx ends (then it returns ctx's error), and runs Run in the
// background. The stop it returns ends Run and closes the queue; call it once the pipeline has
// stopped taking.
func (q *Queue) Start(ctx context.Context) (stop func(), err error) {
	// The lease is written before the first take so that a crash right after it is visible.
	for {
		err := q.Register(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		q.o.Log.Warn("registering the instance lease failed; retrying", "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	bg, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.Run(bg) }()
	return func() {
		cancel()
		<-done
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		if err := q.Close(cctx); err != nil {
			q.o.Log.Error("returning unfinished messages failed; they return when the lease expires", "err", err)
		}
	}, nil
}

// Register writes this instance's leases. Call it before the first Take so that a crash right
// after is already visible to the reapers.
func (q *Queue) Register(ctx context.Context) error {
	exp := float64(q.leaseExpiry())
	rs := q.c.DoMulti(ctx,
		q.c.B().Zadd().Key(q.o.Keys.leases).ScoreMember().ScoreMember(exp, q.o.Instance).Build(),
		q.c.B().Zadd().Key(q.o.Keys.pumpLeases).ScoreMember().ScoreMember(exp, q.o.Instance).Build())
	for _, r := range rs {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

func (q *Queue) leaseLoop(ctx context.Context) {
	tick := time.NewTicker(q.o.Lease / 3)
	defer tick.Stop()
	for {
		if err := q.Register(ctx); err != nil && ctx.Err() == nil {
			q.o.Log.Warn("renewing the instance lease failed", "err", err)
		}
		if q.o.Mode == AtLeastOnce {
			if err := q.reap(ctx); err != nil && ctx.Err() == nil {
				q.o.Log.Warn("returning messages of dead instances failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// reap returns the in-flight entries of instances whose lease expired to the queue.
func (q *Queue) reap(ctx context.Context) error {
	now := time.Now().UnixMilli()
	dead, err := q.c.Do(ctx, q.c.B().Zrangebyscore().Key(q.o.Keys.leases).Min("-inf").
		Max(strconv.FormatInt(now, 10)).Build()).AsStrSlice()
	if err != nil {
		return err
	}
	for _, id := range dead {
		if id == q.o.Instance {
			continue
		}
		n, err := reapScript.Exec(ctx, q.c,
			[]string{q.o.Keys.Queue, q.o.Keys.Inflight(id), q.o.Keys.leases},
			[]string{id, strconv.FormatInt(now, 10), ""}).AsInt64()
		if err != nil {
			return err
		}
		if n > 0 {
			q.o.Log.Info("returned in-flight messages of a dead instance to the queue", "instance", id, "count", n)
		}
	}
	return nil
}

// Close applies the last acknowledgments, gives back whatever is still in this instance's
// in-flight hash (deliveries abandoned at the drain deadline) and drops its leases. Call it after
// the pipeline and Run have stopped.
func (q *Queue) Close(ctx context.Context) error {
	var errs []error
	if err := q.Flush(ctx); err != nil {
		// Without the acknowledgments, giving back in-flight entries would redeliver delivered
		// messages; leave them for the lease to expire instead.
		return err
	}
	if q.o.Mode == AtLeastOnce {
		n, err := reapScript.Exec(ctx, q.c,
			[]string{q.o.Keys.Queue, q.inflight, q.o.Keys.leases},
			[]string{q.o.Instance, "0", "force"}).AsInt64()
		if err != nil {
			errs = append(errs, err)
		} else if n > 0 {
			q.o.Log.Info("returned unfinished in-flight messages to the queue", "count", n)
		}
	}
	if err := q.flushStaging(ctx); err != nil {
		errs = append(errs, err)
	} else if err := q.c.Do(ctx, q.c.B().Zrem().Key(q.o.Keys.pumpLeases).Member(q.o.Instance).Build()).Error(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
