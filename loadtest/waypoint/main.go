// Command waypoint is the load test of `herald waypoint` that k6 cannot run: it holds thousands of
// Server-Sent Events streams open at once. It starts herald waypoint against a JetStream stream
// of its own, opens the streams with a raw HTTP/1.1 client (request written by hand, chunked body
// and SSE lines parsed byte by byte), publishes each stream's event among many that must match
// nothing, and reports whether every stream got exactly its event, the latency from publishing to
// the client, and herald's memory per open stream.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldhq/herald/internal/fixture"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	secret     = "loadtest-jwt-secret"
	governance = "loadtest-governance-key"
	wallets    = 1000
)

type config struct {
	herald, nats      string
	streams, noise    int
	rate, openRate    int
	timeout           time.Duration
	p99Limit          time.Duration
	perStreamLimitKiB float64
}

func main() {
	var c config
	flag.StringVar(&c.herald, "herald", "bin/herald", "the herald binary to start (it is started and stopped by this program)")
	flag.StringVar(&c.nats, "nats", "nats://127.0.0.1:4222", "NATS server with JetStream; a stream of this run's own is created and deleted")
	flag.IntVar(&c.streams, "streams", 10000, "SSE streams held open at once, each waiting for its own event")
	flag.IntVar(&c.noise, "noise", 100000, "events published that must match no stream")
	flag.IntVar(&c.rate, "rate", 20000, "events published per second, open loop (matching and noise interleaved)")
	flag.IntVar(&c.openRate, "open-rate", 5000, "streams opened per second")
	flag.DurationVar(&c.timeout, "timeout", 3*time.Minute, "the whole run's limit")
	flag.DurationVar(&c.p99Limit, "p99", 50*time.Millisecond, "target: event-to-client latency p99 at most this")
	flag.Float64Var(&c.perStreamLimitKiB, "kib-per-stream", 16, "target: herald's RSS growth per open stream at most this many KiB")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: waypoint [flags]\n\nStarts herald waypoint, opens -streams SSE streams, publishes their events among -noise others\nthrough JetStream, and checks that every stream got exactly its event. Exit status 1 when a\ncheck or a target fails.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint load test:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) (bool, error) {
	suffix := randomHex(4)
	stream, subject := "waypoint_load_"+suffix, "waypoint.load."+suffix
	nc, err := nats.Connect(c.nats)
	if err != nil {
		return false, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return false, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{subject + ".>"},
		MaxAge: time.Minute, Storage: jetstream.MemoryStorage}); err != nil {
		return false, fmt.Errorf("creating stream %s: %w", stream, err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = js.DeleteStream(dctx, stream)
	}()

	h, err := startHerald(ctx, c.herald, map[string]string{
		"NATS_SERVER": c.nats, "NATS_STATE_STREAM": stream, "NATS_STATE_SUBJECT": subject,
		"ACAPY_MULTITENANT_JWT_SECRET": secret, "ACAPY_GOVERNANCE_AGENT_API_KEY": governance,
		"SSE_TIMEOUT": "600", "HERALD_LOG_LEVEL": "warn",
	})
	if err != nil {
		return false, err
	}
	defer h.stop()
	fmt.Printf("herald waypoint pid %d on %s, stream %s\n", h.cmd.Process.Pid, h.addr, stream)
	rss0 := h.rss()

	// Open every stream, paced, and wait for their headers.
	ss := make([]*sseStream, c.streams)
	var opened sync.WaitGroup
	var openErrs atomic.Int64
	var firstErr atomic.Pointer[error]
	openStart := time.Now()
	for i := range ss {
		ss[i] = &sseStream{id: i, wallet: fmt.Sprintf("w%d", i%wallets), field: fmt.Sprintf("proof-%s-%d", suffix, i)}
		if at := openStart.Add(time.Duration(i) * time.Second / time.Duration(c.openRate)); time.Until(at) > 0 {
			time.Sleep(time.Until(at))
		}
		opened.Add(1)
		go ss[i].run(h.addr, &opened, func(err error) {
			if openErrs.Add(1) == 1 {
				firstErr.Store(&err)
			}
		})
	}
	opened.Wait()
	if n := openErrs.Load(); n > 0 {
		return false, fmt.Errorf("%d of %d streams failed to open; first: %v", n, c.streams, *firstErr.Load())
	}
	fmt.Printf("opened %d streams in %s\n", c.streams, time.Since(openStart).Round(time.Millisecond))
	time.Sleep(time.Second)
	rss1 := h.rss()
	cpu0 := h.cpu()
	// The client shares the two cores with herald and nats-server: its own collections during the
	// measurement would show up as herald's latency. Its heap may grow a few hundred MiB instead.
	defer debug.SetGCPercent(debug.SetGCPercent(2000))

	// Publish, open loop: event k goes out at start + k/rate whatever came back.
	total := c.streams + c.noise
	every := max(total/max(c.streams, 1), 1)
	pubStart := time.Now()
	next, noiseSent := 0, 0
	for k := 0; k < total && ctx.Err() == nil; k++ {
		if at := pubStart.Add(time.Duration(k) * time.Second / time.Duration(c.rate)); time.Until(at) > 0 {
			time.Sleep(time.Until(at))
		}
		var subj string
		var body []byte
		if (k%every == 0 && next < c.streams) || noiseSent >= c.noise {
			s := ss[next]
			next++
			subj, body = event(subject, "g1", s.wallet, "proofs", "done", s.field)
			s.published.Store(time.Now().UnixNano())
		} else {
			subj, body = noise(subject, ss, noiseSent)
			noiseSent++
		}
		if _, err := js.PublishAsync(subj, body); err != nil {
			return false, fmt.Errorf("publishing: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return false, ctx.Err()
	}
	pubTook := time.Since(pubStart)
	fmt.Printf("published %d events (%d matching, %d noise) in %s: %.0f/s\n", next+noiseSent, next, noiseSent, pubTook.Round(time.Millisecond), float64(next+noiseSent)/pubTook.Seconds())

	// Every stream must end: with its event, then the last chunk.
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range ss {
		select {
		case <-s.done:
		case <-time.After(time.Until(deadline)):
		}
	}
	cpu1 := h.cpu()
	return report(c, ss, rss0, rss1, cpu1-cpu0, next+noiseSent), nil
}

// noise is an event no stream may take: the right wallet and id in the wrong state, the right
// wallet and state with an unknown id, another wallet with a real id, or another topic.
func noise(subject string, ss []*sseStream, k int) (string, []byte) {
	s := ss[k%len(ss)]
	switch k % 4 {
	case 0:
		return event(subject, "g1", s.wallet, "proofs", "request-received", s.field)
	case 1:
		return event(subject, "g1", s.wallet, "proofs", "done", s.field+"-other")
	case 2:
		return event(subject, "g1", fmt.Sprintf("other%d", k%500), "proofs", "done", s.field)
	default:
		return event(subject, "g1", s.wallet, "connections", "done", s.field)
	}
}

// event is an envelope of about 400 bytes, as acapy-cloud publishes them.
func event(subject, group, wallet, topic, state, id string) (string, []byte) {
	body := fmt.Sprintf(`{"wallet_id":%q,"topic":%q,"origin":"tenant","group_id":%q,"payload":{"state":%q,"proof_id":%q,"role":"verifier","connection_id":"6f1c5b0e-1d7a-4d4a-9d7e-3f1f9c2a7b10","created_at":"2026-12-05T12:00:00.000000Z","updated_at":"2026-12-05T12:00:01.000000Z","thread_id":"a9b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","verified":"true","error_msg":null}}`,
		wallet, topic, group, state, id)
	return fmt.Sprintf("%s.%s.%s.%s.%s", subject, group, wallet, topic, state), []byte(body)
}

// sseStream is one client: it waits for the event carrying its own proof_id.
type sseStream struct {
	id            int
	wallet, field string
	published     atomic.Int64 // unix ns, set just before its event was published
	received      int64        // unix ns of its data line
	events        int
	wrong         string // what was wrong with what came, if anything
	ended         bool   // the last chunk came and the server closed
	done          chan struct{}
}

func (s *sseStream) run(addr string, opened *sync.WaitGroup, failed func(error)) {
	s.done = make(chan struct{})
	defer close(s.done)
	openedOnce := sync.OnceFunc(opened.Done)
	defer openedOnce()
	var c net.Conn
	var err error
	for attempt := range 5 { // a full accept queue resets a connect now and then
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
	}
	if err != nil {
		failed(err)
		return
	}
	defer c.Close()
	key := "tenant." + token(s.wallet)
	if s.id%10 == 0 {
		key = "governance." + governance
	}
	query := ""
	if s.id%7 == 0 {
		query = "?group_id=g1" // the events' group: a filter that must still match
	}
	fmt.Fprintf(c, "GET /v1/sse/%s/proofs/proof_id/%s/done%s HTTP/1.1\r\nHost: waypoint\r\nAccept: text/event-stream\r\nx-api-key: %s\r\n\r\n", s.wallet, s.field, query, key)
	br := bufio.NewReaderSize(c, 1024)
	if err := readHead(br); err != nil {
		failed(fmt.Errorf("stream %d: %w", s.id, err))
		return
	}
	openedOnce()
	var text []byte
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			s.wrong = "connection closed before the last chunk: " + err.Error()
			return
		}
		n, err := strconv.ParseInt(string(bytes.TrimRight(line, "\r\n")), 16, 64)
		if err != nil {
			s.wrong = fmt.Sprintf("bad chunk size line %q", line)
			return
		}
		if n == 0 {
			crlf, _ := br.ReadSlice('\n')
			_, err := br.ReadByte()
			s.ended = string(crlf) == "\r\n" && errors.Is(err, io.EOF)
			break
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			s.wrong = "chunk: " + err.Error()
			return
		}
		text = append(text, chunk[:n]...)
		for {
			i := bytes.Index(text, []byte("\n\n"))
			if i < 0 {
				break
			}
			s.frame(text[:i])
			text = text[i+2:]
		}
	}
}

// frame checks one SSE frame: a ping comment, or the stream's event with the reference's key order.
func (s *sseStream) frame(f []byte) {
	if bytes.HasPrefix(f, []byte(": ping - ")) {
		return
	}
	data, ok := bytes.CutPrefix(f, []byte("data: "))
	if !ok {
		s.wrong = fmt.Sprintf("unexpected frame %q", f)
		return
	}
	if s.events == 0 {
		s.received = time.Now().UnixNano()
	}
	s.events++
	prefix := fmt.Sprintf(`{"wallet_id":%q,"topic":"proofs","origin":"tenant","group_id":"g1","payload":{"state":"done","proof_id":%q,`, s.wallet, s.field)
	if !bytes.HasPrefix(data, []byte(prefix)) {
		s.wrong = fmt.Sprintf("wrong event %.200s", data)
	}
}

func readHead(br *bufio.Reader) error {
	status, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		return fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	want := map[string]string{"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store",
		"x-accel-buffering": "no", "transfer-encoding": "chunked"}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[strings.ToLower(k)]; ok {
			if strings.TrimSpace(v) != w {
				return fmt.Errorf("header %s: %q, want %q", k, strings.TrimSpace(v), w)
			}
			delete(want, strings.ToLower(k))
		}
	}
	if len(want) > 0 {
		return fmt.Errorf("headers missing: %v", want)
	}
	return nil
}

// token is a tenant's HS256 JWT, as ACA-Py issues them.
func token(wallet string) string {
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(`{"wallet_id":"`+wallet+`"}`))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(mac.Sum(nil))
}

func report(c config, ss []*sseStream, rss0, rss1 int64, cpu time.Duration, published int) bool {
	var lat []time.Duration
	got, missing, extra, wrong, unended := 0, 0, 0, 0, 0
	var firstWrong string
	for _, s := range ss {
		switch {
		case s.wrong != "":
			wrong++
			if firstWrong == "" {
				firstWrong = fmt.Sprintf("stream %d: %s", s.id, s.wrong)
			}
		case s.events == 0:
			missing++
		case s.events > 1:
			extra++
		default:
			got++
			lat = append(lat, time.Duration(s.received-s.published.Load()))
		}
		if s.wrong == "" && s.events > 0 && !s.ended {
			unended++
		}
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(int(p*float64(len(lat))), len(lat)-1)].Round(10 * time.Microsecond)
	}
	perStream := float64(rss1-rss0) / float64(len(ss)) / 1024
	fmt.Printf("streams: %d opened, %d got exactly their event, %d missing, %d got more than one, %d wrong, %d not closed after it\n",
		len(ss), got, missing, extra, wrong, unended)
	if firstWrong != "" {
		fmt.Println("first wrong:", firstWrong)
	}
	fmt.Printf("latency, publish to client: p50 %s p99 %s p999 %s max %s\n", q(0.50), q(0.99), q(0.999), q(1))
	fmt.Printf("herald RSS: %.1f MiB before the streams, %.1f MiB with them open: %.2f KiB per stream\n",
		float64(rss0)/(1<<20), float64(rss1)/(1<<20), perStream)
	fmt.Printf("herald CPU while the events were published and answered: %s (%.1f µs per event)\n",
		cpu.Round(time.Millisecond), float64(cpu.Microseconds())/float64(max(published, 1)))
	pass := true
	check := func(name string, ok bool) {
		verdict := "PASS"
		if !ok {
			verdict, pass = "FAIL", false
		}
		fmt.Printf("%s: %s\n", verdict, name)
	}
	check("every stream got exactly its event and was then closed", got == len(ss) && unended == 0)
	check(fmt.Sprintf("latency p99 %s <= %s", q(0.99), c.p99Limit), len(lat) > 0 && q(0.99) <= c.p99Limit)
	check(fmt.Sprintf("%.2f KiB per open stream <= %.0f KiB", perStream, c.perStreamLimitKiB), perStream <= c.perStreamLimitKiB)
	return pass
}

type herald struct {
	cmd  *exec.Cmd
	addr string
}

func startHerald(ctx context.Context, bin string, env map[string]string) (*herald, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "waypoint")
	cmd.Env = append(os.Environ(), "HERALD_LISTEN="+addr)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	h := &herald{cmd: cmd, addr: addr}
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/health/ready")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return h, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			h.stop()
			return nil, fmt.Errorf("herald waypoint not ready after 20s (last: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *herald) stop() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
}

// rss is herald's resident set in bytes.
func (h *herald) rss() int64 { return fixture.RSS(h.cmd.Process.Pid) }

// cpu is herald's user + system time so far.
func (h *herald) cpu() time.Duration { return fixture.CPUTime(h.cmd.Process.Pid) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
