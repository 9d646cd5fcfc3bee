// Package sink holds the sinks that carry a message to its receiver: HTTP(S) POST through
// pooled fasthttp clients and WebSocket (ws, wss) frames, chosen by the URL's scheme.
package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/endpoint"
	"github.com/valyala/fasthttp"
)

// Options configure the delivery sinks.
type Options struct {
	// Timeout bounds one delivery, connection included. The reference uses 10 s.
	Timeout time.Duration
	// MaxConnsPerHost caps the connections kept to one receiver.
	MaxConnsPerHost int
	// TLS configures https and wss; nil uses the system roots.
	TLS *tls.Config
	// UserAgent is sent when the entry names none.
	UserAgent string
	// DenyPrivate refuses receivers at loopback, private and link-local addresses (see Denied).
	// Off by default: ACA-Py deployments deliver to controllers on private networks.
	DenyPrivate bool
	// Loops is the number of event loops of a LoopSink (NewLoop): 0 is one per core, a negative
	// number turns them off.
	Loops int
}

// DefaultTimeout is the reference deliverer's per-request timeout.
const DefaultTimeout = 10 * time.Second

// Sink delivers by scheme: http and https are POSTed, ws and wss get one binary frame, anything
// else is a permanent failure.
type Sink struct {
	o    Options // with the defaults filled in
	http *fasthttp.Client
	ws   websocket.Dialer
}

// New returns a Sink.
func New(o Options) *Sink {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = 512
	}
	if o.UserAgent == "" {
		o.UserAgent = "herald"
	}
	s := &Sink{
		o: o,
		http: &fasthttp.Client{
			Name:                          o.UserAgent,
			MaxConnsPerHost:               o.MaxConnsPerHost,
			MaxIdleConnDuration:           30 * time.Second,
			ReadTimeout:                   o.Timeout,
			WriteTimeout:                  o.Timeout,
			MaxConnWaitTimeout:            o.Timeout,
			MaxResponseBodySize:           4 << 20,
			TLSConfig:                     o.TLS,
			DisableHeaderNamesNormalizing: true,
			DisablePathNormalizing:        true,
		},
		ws: websocket.Dialer{
			HandshakeTimeout: o.Timeout,
			TLSClientConfig:  o.TLS,
		},
	}
	if o.DenyPrivate {
		timeout := o.Timeout
		s.http.Dial = func(addr string) (net.Conn, error) { return guardedDial(context.Background(), addr, timeout) }
		s.ws.NetDialContext = func(ctx context.Context, _, addr string) (net.Conn, error) { return guardedDial(ctx, addr, timeout) }
	}
	return s
}

// Scheme is the kind of receiver a URL names.
type Scheme uint8

// The schemes a Sink tells apart.
const (
	SchemeOther Scheme = iota
	SchemeHTTP
	SchemeHTTPS
	SchemeWS
	SchemeWSS
)

// SchemeOf reads the scheme of url, case-insensitively, without allocating.
func SchemeOf(url []byte) Scheme {
	i := 0
	for i < len(url) && url[i] != ':' {
		i++
	}
	if i == len(url) {
		return SchemeOther
	}
	var b [5]byte
	if i > len(b) {
		return SchemeOther
	}
	for j := range i {
		c := url[j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[j] = c
	}
	switch string(b[:i]) {
	case "http":
		return SchemeHTTP
	case "https":
		return SchemeHTTPS
	case "ws":
		return SchemeWS
	case "wss":
		return SchemeWSS
	}
	return SchemeOther
}

// Deliver implements engine.Sink.
func (s *Sink) Deliver(m *engine.Message) engine.Result {
	switch SchemeOf(m.URL) {
	case SchemeHTTP, SchemeHTTPS:
		return s.post(m)
	case SchemeWS, SchemeWSS:
		return s.frame(m)
	}
	return engine.Result{Err: fmt.Errorf("unsupported scheme in %q", schemePart(m.URL)), Permanent: true}
}

func schemePart(url []byte) string {
	for i, c := range url {
		if c == ':' {
			return string(url[:i])
		}
		if i == 16 {
			break
		}
	}
	return "no scheme"
}

// ErrStatus is a non-2xx answer from a receiver.
var ErrStatus = errors.New("receiver answered with a non-2xx status")

// statusErrors holds one error per status so that a failing receiver costs no allocation.
var statusErrors [600]error

func init() {
	for i := range statusErrors {
		statusErrors[i] = fmt.Errorf("%w: %d", ErrStatus, i)
	}
}

func (s *Sink) post(m *engine.Message) engine.Result {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	buildRequest(req, m)
	if err := s.http.DoTimeout(req, resp, s.o.Timeout); err != nil {
		return engine.Result{Err: err, Permanent: errors.Is(err, ErrDenied)}
	}
	code := resp.StatusCode()
	if code < 200 || code >= 300 {
		err := ErrStatus
		if code > 0 && code < len(statusErrors) {
			err = statusErrors[code]
		}
		r := engine.Result{Err: err, Status: code}
		if endpoint.Throttled(code) {
			r.RetryAfter = endpoint.ParseRetryAfter(resp.Header.Peek("Retry-After"), time.Now())
		}
		return r
	}
	return engine.Result{Status: code}
}

// buildRequest turns m into a POST with exactly the entry's header names and values. The body is
// referenced, not copied: m outlives the request.
func buildRequest(req *fasthttp.Request, m *engine.Message) {
	req.Header.DisableNormalizing()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURIBytes(m.URL)
	req.Header.SetNoDefaultContentType(true)
	for _, h := range m.Headers {
		req.Header.SetBytesKV(h.Name, h.Value)
	}
	req.SetBodyRaw(m.Payload)
}

// frame opens a WebSocket with the entry's headers, sends the payload as one binary frame and
// closes, as the reference does. WebSocket receivers are rare, so this path is not pooled.
func (s *Sink) frame(m *engine.Message) engine.Result {
	h := make(http.Header, len(m.Headers))
	for _, kv := range m.Headers {
		h[string(kv.Name)] = append(h[string(kv.Name)], string(kv.Value))
	}
	conn, resp, err := s.ws.Dial(string(m.URL), h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
			_ = resp.Body.Close()
		}
		return engine.Result{Err: fmt.Errorf("websocket handshake: %w", err), Status: status, Permanent: errors.Is(err, ErrDenied)}
	}
	defer conn.Close()
	deadline := time.Now().Add(s.o.Timeout)
	_ = conn.SetWriteDeadline(deadline)
	if err := conn.WriteMessage(websocket.BinaryMessage, m.Payload); err != nil {
		return engine.Result{Err: fmt.Errorf("websocket send: %w", err)}
	}
	_ = conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	return engine.Result{Status: http.StatusSwitchingProtocols}
}
