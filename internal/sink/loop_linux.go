package sink

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/endpoint"
)

// LoopSink is a Sink whose plain-http POSTs go through event loops of its own, one per core,
// each waiting on all its connections with epoll, the way wrk drives its load: one write and one
// read per delivery, no goroutine parked per answer. Everything the loops do not handle
// themselves (https, WebSocket, a host still being resolved, a header they will not send as it
// is) goes to the pooled Sink on a goroutine, unchanged.
type LoopSink struct {
	*Sink
	loops int
	dns   dnsCache
}

// NewLoop returns a LoopSink, or the pooled Sink alone when o.DenyPrivate is set (the guard is
// the pooled client's dialer) or o.Loops is negative.
func NewLoop(o Options) engine.Sink {
	s := New(o)
	if o.DenyPrivate || o.Loops < 0 {
		return s
	}
	loops := o.Loops
	if loops == 0 {
		loops = runtime.GOMAXPROCS(0)
	}
	return &LoopSink{Sink: s, loops: loops}
}

// Serve implements engine.AsyncSink.
func (s *LoopSink) Serve(f *engine.Feed, limit int) {
	n := max(min(s.loops, limit), 1)
	ls := make([]*loop, 0, n)
	for i := range n {
		share := limit / n
		if i < limit%n {
			share++
		}
		l, err := newLoop(s, f, share, max(s.o.MaxConnsPerHost/n, 1))
		if err != nil {
			// Out of descriptors, most likely: the pooled client carries everything instead.
			for _, l := range ls {
				l.shut()
			}
			f.ServeEach(limit, s.Sink.Deliver)
			return
		}
		ls = append(ls, l)
	}
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run()
		}()
	}
	wg.Wait()
}

// Errors of the event loop's deliveries, fixed so that failures cost no allocation.
var (
	errTimeout = errors.New("timed out waiting for the receiver's answer")
	errConnect = errors.New("could not connect to the receiver")
)

// conn is one connection of a loop, idle or carrying one request.
type conn struct {
	fd      int
	gen     int32
	h       *host
	m       *engine.Message // nil while idle
	start   time.Time
	dead    time.Time // when the request times out
	used    time.Time // when the connection last finished a request, for idle expiry
	wbuf    []byte
	woff    int
	rbuf    []byte
	rn      int
	resp    response
	dialing bool
	reused  bool // carried a request before this one: a close before any answer may be stale
	gotAny  bool // some of this request's answer arrived
	redial  bool // this request already moved once from a stale connection
}

// host is one receiver's connections in one loop.
type host struct {
	key     string // the URL's authority
	name    string // host name or address, to resolve
	port    int
	idle    []*conn
	waiting []*engine.Message
	open    int
}

type loop struct {
	s       *LoopSink
	f       *engine.Feed
	id      int
	ep, efd int
	epf     *os.File        // ep, registered with the runtime's poller
	rc      syscall.RawConn // waits on epf
	limit   int             // deliveries this loop may have in flight, its waiting ones included
	perHost int
	busy    int          // deliveries the loop itself carries or holds waiting
	aside   atomic.Int64 // deliveries handed to the pooled client, not yet reported
	conns   map[int]*conn
	hosts   map[string]*host
	events  []syscall.EpollEvent
	free    []*conn
	gen     int32
	closed  bool
	now     time.Time     // read once per round of events
	quiet   atomic.Bool   // the loop waits on nudge, not on epoll: wake sends there
	nudge   chan struct{} // holds at most one wake-up
	timer   *time.Timer   // bounds a wait on nudge when a scan will be due
	life    sync.RWMutex  // held by wake while it writes, so that shut cannot close efd under it
	dead    bool          // shut: wake must not write to a descriptor number that may be reused
}

func newLoop(s *LoopSink, f *engine.Feed, limit, perHost int) (*loop, error) {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	efd, err := eventfd()
	if err != nil {
		syscall.Close(ep)
		return nil, err
	}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, efd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(efd)}); err != nil {
		syscall.Close(ep)
		syscall.Close(efd)
		return nil, err
	}
	// The epoll descriptor is itself pollable: handed to the runtime's poller, a loop with
	// nothing ready parks like any goroutine waiting on a socket instead of holding a thread,
	// and its CPU, in epoll_wait.
	if err := syscall.SetNonblock(ep, true); err != nil {
		syscall.Close(ep)
		syscall.Close(efd)
		return nil, err
	}
	epf := os.NewFile(uintptr(ep), "epoll")
	rc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		syscall.Close(efd)
		return nil, err
	}
	l := &loop{s: s, f: f, ep: ep, epf: epf, rc: rc, efd: efd, limit: max(limit, 1), perHost: perHost,
		conns: map[int]*conn{}, hosts: map[string]*host{}, events: make([]syscall.EpollEvent, 256),
		nudge: make(chan struct{}, 1)}
	l.id = f.Subscribe(l.wake)
	return l, nil
}

var one = [8]byte{1}

// wake interrupts the loop's wait. Any goroutine may call it.
func (l *loop) wake() {
	if l.quiet.Load() {
		select {
		case l.nudge <- struct{}{}:
		default: // a wake-up is already pending
		}
		return
	}
	l.life.RLock()
	if !l.dead {
		_, _ = syscall.Write(l.efd, one[:])
	}
	l.life.RUnlock()
}

func (l *loop) shut() {
	l.life.Lock()
	defer l.life.Unlock()
	l.dead = true
	for fd := range l.conns {
		syscall.Close(fd)
	}
	_ = l.epf.Close()
	syscall.Close(l.efd)
}

func (l *loop) inFlight() int { return l.busy + int(l.aside.Load()) }

// run is the loop: take what there is room for, wait for the sockets, settle what answered.
func (l *loop) run() {
	defer l.shut()
	var drained [8]byte
	var n int
	var werr error
	poll := func(fd uintptr) bool {
		n, werr = syscall.EpollWait(int(fd), l.events, 0)
		return n > 0 || (werr != nil && werr != syscall.EINTR && werr != syscall.EAGAIN)
	}
	var armed bool // a read deadline is set on epf
	l.now = time.Now()
	nextScan := l.now.Add(scanEvery)
	for {
		starved := false
		for !l.closed && l.inFlight() < l.limit {
			m, open := l.f.Next()
			if !open {
				l.closed = true
				break
			}
			if m == nil {
				starved = true
				break
			}
			l.start(m)
		}
		if l.f.Abandoned() {
			return // the pipeline gave up waiting: what is in flight stays unsettled, to be redelivered
		}
		if l.closed && l.inFlight() == 0 {
			return
		}
		// With nothing of its own in flight the loop has no socket to watch but idle ones, whose
		// closing can wait: it parks on a channel, and a wake-up is a goroutine made runnable
		// instead of an eventfd write the runtime notices only at its next poll of the network,
		// which under load comes late.
		if starved {
			l.quiet.Store(l.busy == 0)
		}
		if starved && !l.f.Idle(l.id) {
			l.quiet.Store(false)
			poll(uintptr(l.ep)) // work arrived while we looked away: look, but do not wait
		} else if starved && l.quiet.Load() {
			if !poll(uintptr(l.ep)) {
				l.sleep(nextScan)
				poll(uintptr(l.ep)) // what idle connections did meanwhile
			}
			l.quiet.Store(false)
		} else if !poll(uintptr(l.ep)) {
			// Nothing is ready: park until something is, or until the next scan is due.
			scanNeeded := l.busy > 0 || len(l.conns) > 0 || l.aside.Load() > 0 || l.closed
			if scanNeeded && !armed {
				_ = l.epf.SetReadDeadline(nextScan)
				armed = true
			} else if !scanNeeded && armed {
				_ = l.epf.SetReadDeadline(time.Time{})
				armed = false
			}
			if err := l.rc.Read(poll); err != nil {
				n = 0
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					panic("sink: waiting on epoll: " + err.Error()) // only a closed descriptor gets here: a bug
				}
				armed = false
			}
		}
		if werr != nil && werr != syscall.EINTR && werr != syscall.EAGAIN {
			panic("sink: epoll_wait: " + werr.Error())
		}
		for i := range max(n, 0) {
			e := &l.events[i]
			fd := int(e.Fd)
			if fd == l.efd {
				_, _ = syscall.Read(l.efd, drained[:])
				continue
			}
			if c := l.conns[fd]; c != nil && c.gen == e.Pad {
				l.event(c, e.Events)
			}
		}
		// One clock reading per round serves every request of the round: request clocks are
		// for timeouts of seconds and metrics, and a reading per request costs more than both.
		l.now = time.Now()
		if now := l.now; now.After(nextScan) {
			l.scan(now)
			nextScan = now.Add(scanEvery)
			if armed {
				_ = l.epf.SetReadDeadline(nextScan)
			}
		}
	}
}

// sleep waits for a wake-up on the loop's channel, or until the next scan is due when the loop
// has connections to expire.
func (l *loop) sleep(nextScan time.Time) {
	if len(l.conns) == 0 {
		<-l.nudge
		return
	}
	if l.timer == nil {
		l.timer = time.NewTimer(time.Until(nextScan))
	} else {
		l.timer.Reset(time.Until(nextScan))
	}
	select {
	case <-l.nudge:
		l.timer.Stop()
	case <-l.timer.C:
	}
}

// scanEvery is how often the loop looks for timed-out requests and expired idle connections.
const scanEvery = 50 * time.Millisecond

// start sends m, or queues it behind its host's busy connections, or hands it to the pooled client.
func (l *loop) start(m *engine.Message) {
	t, ok := parseTarget(m.URL)
	if !ok || !sendable(m) {
		l.pooled(m)
		return
	}
	h := l.hosts[string(t.authority)]
	if h == nil {
		h = &host{key: string(t.authority), name: string(t.host), port: t.port}
		l.hosts[h.key] = h
	}
	l.busy++
	l.send(h, m, &t)
}

// send gives m to an idle connection of h, a new one, or h's queue. t is m's parsed URL, or nil
// when m comes off the queue.
func (l *loop) send(h *host, m *engine.Message, t *target) {
	if t == nil {
		pt, _ := parseTarget(m.URL) // it parsed when m was started
		t = &pt
	}
	for len(h.idle) > 0 {
		c := h.idle[len(h.idle)-1]
		h.idle = h.idle[:len(h.idle)-1]
		l.load(c, m, t)
		c.reused = true
		if l.flush(c) {
			return
		}
		c.m = nil
		l.close(c) // the receiver closed it while idle; try the next
	}
	if h.open >= l.perHost {
		h.waiting = append(h.waiting, m)
		return
	}
	addr, ok := l.s.dns.lookup(h.name)
	if !ok {
		// Not resolved yet, or not resolvable: the pooled client resolves on its own and says
		// what went wrong.
		l.busy--
		l.pooled(m)
		return
	}
	c, err := l.dial(h, addr)
	if err != nil {
		l.busy--
		l.f.Done(m, engine.Result{Err: errConnect}, 0)
		return
	}
	l.load(c, m, t) // it goes out once the connection is up (EPOLLOUT)
}

// load puts m's request into c and starts its clock.
func (l *loop) load(c *conn, m *engine.Message, t *target) {
	now := l.now
	c.m, c.start, c.dead = m, now, now.Add(l.s.o.Timeout)
	c.wbuf = appendRequest(c.wbuf[:0], t, m, l.s.o.UserAgent)
	c.woff, c.rn, c.gotAny, c.redial = 0, 0, false, false
	c.resp.reset()
}

// flush writes what is left of c's request; false means the connection is broken.
func (l *loop) flush(c *conn) bool {
	for c.woff < len(c.wbuf) {
		n, err := syscall.Write(c.fd, c.wbuf[c.woff:])
		if err == syscall.EAGAIN {
			return true // EPOLLOUT says when to go on
		}
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		c.woff += n
	}
	return true
}

// event handles readiness of c.
func (l *loop) event(c *conn, ev uint32) {
	if c.dialing {
		if ev&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
			return
		}
		if soErr, err := syscall.GetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_ERROR); err != nil || soErr != 0 {
			l.fail(c, errConnect)
			return
		}
		c.dialing = false
		if c.m == nil {
			l.idleAgain(c)
			return
		}
		if !l.flush(c) {
			l.fail(c, errConnect)
		}
		return
	}
	if c.m != nil && c.woff < len(c.wbuf) && ev&syscall.EPOLLOUT != 0 {
		if !l.flush(c) {
			l.broken(c)
			return
		}
	}
	if ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
		l.read(c, ev&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0)
	}
}

// read takes what c has to read (edge-triggered: until a short read) and settles the request
// when its answer is complete.
func (l *loop) read(c *conn, hup bool) {
	for {
		if c.rn == len(c.rbuf) {
			if len(c.rbuf) >= 2*maxResponseHeader {
				l.fail(c, errHeaderTooLarge)
				return
			}
			c.rbuf = append(c.rbuf, make([]byte, len(c.rbuf))...)
		}
		space := len(c.rbuf) - c.rn
		n, err := syscall.Read(c.fd, c.rbuf[c.rn:])
		if err == syscall.EAGAIN {
			return
		}
		if err == syscall.EINTR {
			continue
		}
		if c.m == nil {
			l.close(c) // an idle connection spoke or closed: either way it is done
			return
		}
		if err != nil || n == 0 {
			if c.resp.eof() {
				l.answered(c)
				return
			}
			l.broken(c)
			return
		}
		c.gotAny = true
		c.rn += n
		used, done, perr := c.resp.feed(c.rbuf[:c.rn])
		if perr != nil {
			l.fail(c, perr)
			return
		}
		if done {
			if used != c.rn {
				c.resp.keepAlive = false // the receiver said more than one answer
			}
			l.answered(c)
			return
		}
		c.rn = copy(c.rbuf, c.rbuf[used:c.rn])
		if n < space && !hup {
			// A short read drained the socket; the next edge brings the rest. Not so when
			// the peer also hung up: that edge came with this one, and the close must be read.
			return
		}
	}
}

// answered settles c's request with the receiver's status and frees or closes c.
func (l *loop) answered(c *conn) {
	m, code, h, wait := c.m, c.resp.status, c.h, c.resp.retryAfter
	took := l.now.Sub(c.start)
	c.m = nil
	l.busy--
	if c.resp.keepAlive && c.resp.state == stDone {
		l.idleAgain(c)
	} else {
		l.close(c)
	}
	r := engine.Result{Status: code}
	if code < 200 || code >= 300 {
		r.Err = ErrStatus
		if code > 0 && code < len(statusErrors) {
			r.Err = statusErrors[code]
		}
		if endpoint.Throttled(code) {
			r.RetryAfter = wait
		}
	}
	l.f.Done(m, r, took)
	l.next(h) // on the connection just freed, or on a new one if it was closed
}

// broken handles a connection that closed or failed under a request. A reused connection that
// closed before any answer most likely hit the receiver's idle timeout: the request goes out
// once more on a new connection, as browsers and fasthttp do. Otherwise the delivery fails.
func (l *loop) broken(c *conn) {
	if c.reused && !c.gotAny && !c.redial {
		m, h := c.m, c.h
		c.m = nil
		l.close(c)
		if addr, ok := l.s.dns.lookup(h.name); ok {
			if nc, err := l.dial(h, addr); err == nil {
				t, _ := parseTarget(m.URL)
				l.load(nc, m, &t)
				nc.redial = true
				return
			}
		}
		l.busy--
		l.f.Done(m, engine.Result{Err: errClosedEarly}, 0)
		l.next(h)
		return
	}
	l.fail(c, errClosedEarly)
}

// fail ends c's request with err and closes c.
func (l *loop) fail(c *conn, err error) {
	m, h := c.m, c.h
	took := l.now.Sub(c.start)
	c.m = nil
	l.close(c)
	if m != nil {
		l.busy--
		l.f.Done(m, engine.Result{Err: err}, took)
	}
	l.next(h)
}

// next starts the requests waiting for h that it now has room for: a freed connection, or
// connections that closed or failed to open (each failing at once would otherwise leave the rest
// waiting for an answer that never comes).
func (l *loop) next(h *host) {
	for len(h.waiting) > 0 && (len(h.idle) > 0 || h.open < l.perHost) {
		m := h.waiting[0]
		copy(h.waiting, h.waiting[1:])
		h.waiting[len(h.waiting)-1] = nil
		h.waiting = h.waiting[:len(h.waiting)-1]
		l.send(h, m, nil)
	}
}

// scan fails requests past their deadline, closes connections idle for too long and forgets
// receivers it has no connection to, so that a deliverer serving many agents over months does
// not keep one entry per agent it ever saw.
func (l *loop) scan(now time.Time) {
	for _, c := range l.conns {
		switch {
		case c.m != nil && now.After(c.dead):
			l.fail(c, errTimeout)
		case c.m == nil && !c.dialing && now.Sub(c.used) > idleTimeout:
			l.close(c)
		}
	}
	for k, h := range l.hosts {
		if h.open == 0 && len(h.waiting) == 0 {
			delete(l.hosts, k)
		}
	}
}

// idleTimeout closes connections nobody used for this long, as the pooled client does.
const idleTimeout = 30 * time.Second

func (l *loop) idleAgain(c *conn) {
	c.used = l.now
	c.h.idle = append(c.h.idle, c)
}

// dial opens a non-blocking connection to addr for h; the loop learns it is up from EPOLLOUT.
func (l *loop) dial(h *host, addr netip.Addr) (*conn, error) {
	family := syscall.AF_INET
	if addr.Is6() {
		family = syscall.AF_INET6
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	var sa syscall.Sockaddr
	if addr.Is4() {
		sa = &syscall.SockaddrInet4{Port: h.port, Addr: addr.As4()}
	} else {
		sa = &syscall.SockaddrInet6{Port: h.port, Addr: addr.As16()}
	}
	if err := syscall.Connect(fd, sa); err != nil && err != syscall.EINPROGRESS {
		syscall.Close(fd)
		return nil, err
	}
	l.gen++
	// The generation rides in the event's spare half: an event still queued for a descriptor
	// closed earlier in the same batch must not reach a new connection that reuses its number.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET, Fd: int32(fd), Pad: l.gen}
	if err := syscall.EpollCtl(l.ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	c := l.newConn()
	c.fd, c.gen, c.h, c.dialing, c.reused, c.gotAny, c.redial = fd, l.gen, h, true, false, false, false
	c.woff, c.rn = 0, 0
	c.resp.reset()
	l.conns[fd] = c
	h.open++
	return c, nil
}

// epollET is EPOLLET as the unsigned mask EpollEvent.Events holds.
const epollET = 1 << 31

func (l *loop) newConn() *conn {
	if n := len(l.free); n > 0 {
		c := l.free[n-1]
		l.free = l.free[:n-1]
		return c
	}
	return &conn{rbuf: make([]byte, 4096), wbuf: make([]byte, 0, 1024)}
}

// close closes c and forgets it; c must carry no request.
func (l *loop) close(c *conn) {
	if _, ok := l.conns[c.fd]; !ok {
		return
	}
	delete(l.conns, c.fd)
	_ = syscall.Close(c.fd) // closing also removes it from the epoll set
	h := c.h
	h.open--
	for i, ic := range h.idle {
		if ic == c {
			h.idle = append(h.idle[:i], h.idle[i+1:]...)
			break
		}
	}
	c.h, c.m = nil, nil
	if cap(c.rbuf) > 16<<10 {
		c.rbuf = make([]byte, 4096) // a one-off large answer does not stay pinned
	}
	l.free = append(l.free, c)
}

// pooled hands m to the pooled client on a goroutine of its own.
func (l *loop) pooled(m *engine.Message) {
	l.aside.Add(1)
	go func() {
		start := time.Now()
		r := l.s.Sink.Deliver(m)
		l.f.Done(m, r, time.Since(start))
		l.aside.Add(-1)
		l.wake() // a no-op once the loop has ended

	}()
}

func eventfd() (int, error) {
	fd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// dnsCache resolves receiver host names off the loops: a loop never waits on DNS. A name it has
// not resolved yet goes through the pooled client meanwhile.
type dnsCache struct {
	mu        sync.Mutex
	entries   map[string]*dnsEntry
	nextPrune time.Time
}

type dnsEntry struct {
	addr      netip.Addr
	ok        bool
	expires   time.Time
	resolving bool
}

// dnsTTL is how long a resolved address is used before it is looked up again (in the background,
// the old one serving meanwhile); a failed lookup is retried after dnsRetry.
// A name not looked up for dnsForget is dropped, so that the cache holds the receivers of the
// last minutes, not every one ever seen.
const (
	dnsTTL    = 30 * time.Second
	dnsRetry  = 5 * time.Second
	dnsForget = 10 * time.Minute
)

// lookup returns host's address if known. IP literals need no lookup.
func (d *dnsCache) lookup(host string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), true
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.entries == nil {
		d.entries = map[string]*dnsEntry{}
	}
	if now.After(d.nextPrune) {
		for k, e := range d.entries {
			if !e.resolving && now.Sub(e.expires) > dnsForget {
				delete(d.entries, k)
			}
		}
		d.nextPrune = now.Add(time.Minute)
	}
	e := d.entries[host]
	if e == nil {
		e = &dnsEntry{}
		d.entries[host] = e
	}
	if now.After(e.expires) && !e.resolving {
		e.resolving = true
		go d.resolve(host, e)
	}
	return e.addr, e.ok
}

func (d *dnsCache) resolve(host string, e *dnsEntry) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	var best netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() { // IPv4 first, as the pooled client dials
			best = a
			break
		}
		if !best.IsValid() {
			best = a
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e.resolving = false
	if err != nil || !best.IsValid() {
		e.ok, e.expires = false, time.Now().Add(dnsRetry)
		return
	}
	e.addr, e.ok, e.expires = best, true, time.Now().Add(dnsTTL)
}
