package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/valyala/fasthttp"
)

// invitationText is the reference's answer to GET /?c_i=...
const invitationText = "You have received a connection invitation. To accept the invitation, paste it into your agent application."

// server builds the fasthttp server of one listener.
func (r *Relay) server(transport string) *fasthttp.Server {
	h := r.serveHTTP
	if transport == acapy.TransportWS {
		h = r.serveWS
	}
	return &fasthttp.Server{
		Handler:            h,
		Name:               "herald",
		MaxRequestBodySize: r.cfg.MaxBody,
		ReadTimeout:        r.cfg.ReadTimeout,
		// A request may wait for its direct response.
		WriteTimeout:         r.cfg.ResponseWait + 30*time.Second,
		IdleTimeout:          2 * time.Minute,
		NoDefaultContentType: true,
		CloseOnShutdown:      true,
		Logger:               discard{},
		ErrorHandler:         r.requestError,
	}
}

// requestError answers a request fasthttp could not read: 413 for a body over the limit, 400 with
// the parser's reason otherwise.
func (r *Relay) requestError(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		r.requests.WithLabelValues(acapy.TransportHTTP, outRejected).Inc()
		ctx.Error(fmt.Sprintf("body larger than the relay's limit of %d bytes (HERALD_MAX_BODY)", r.cfg.MaxBody), fasthttp.StatusRequestEntityTooLarge)
		return
	}
	ctx.Error("malformed HTTP request: "+err.Error(), fasthttp.StatusBadRequest)
}

type discard struct{}

func (discard) Printf(string, ...any) {}

func (r *Relay) serveHTTP(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) != "/" {
		ctx.Error("not found: the relay serves GET / and POST /", fasthttp.StatusNotFound)
		return
	}
	switch {
	case ctx.IsGet() || ctx.IsHead():
		if len(ctx.QueryArgs().Peek("c_i")) > 0 {
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString(invitationText)
		}
		return
	case !ctx.IsPost():
		ctx.Response.Header.Set("Allow", "GET, POST")
		ctx.Error("method not allowed: the relay serves GET / and POST /", fasthttp.StatusMethodNotAllowed)
		return
	}
	res := r.Handle(ctx, ctx.PostBody(), acapy.TransportHTTP)
	switch {
	case res.Status != 200:
		if res.Status == 503 {
			ctx.Response.Header.Set("Retry-After", "1")
		}
		ctx.Error(res.Reason, res.Status)
	case res.Response != nil:
		ct := res.Response.ContentType
		if ct == "" {
			ct = "application/json"
		}
		ctx.SetContentType(ct)
		ctx.SetBody(res.Response.Body)
	}
}

var upgrader = websocket.FastHTTPUpgrader{
	CheckOrigin: func(*fasthttp.RequestCtx) bool { return true },
}

// serveWS upgrades GET / and queues every text or binary frame. A frame that is not a packed
// message gets a close frame with the reason; other connections are not affected.
func (r *Relay) serveWS(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) != "/" || !ctx.IsGet() {
		ctx.Error("not found: the WebSocket relay upgrades GET /", fasthttp.StatusNotFound)
		return
	}
	// The RequestCtx is recycled once this handler returns, and the session outlives it.
	err := upgrader.Upgrade(ctx, func(conn *websocket.Conn) {
		r.wsSession(r.ctx, conn)
	})
	if err != nil {
		r.log.Debug("websocket upgrade failed", "remote", ctx.RemoteAddr().String(), "err", err)
	}
}

func (r *Relay) wsSession(parent context.Context, conn *websocket.Conn) {
	ctx, cancel := context.WithCancel(parent)
	var workers sync.WaitGroup
	// On the way out: stop the pinger and the responders, close the connection so that their
	// writes fail at once, and wait for them, since fasthttp reuses the connection once the
	// session returns.
	defer func() { cancel(); _ = conn.Close(); workers.Wait() }()
	conn.SetReadLimit(int64(r.cfg.MaxBody))
	var writeMu sync.Mutex // direct responses are written from their own goroutines
	write := func(typ int, b []byte) {
		writeMu.Lock()
		defer writeMu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_ = conn.WriteMessage(typ, b)
	}
	// Keepalive, as the reference's heartbeat: a ping every wsPing; a peer that answers nothing
	// (not even a pong) for wsIdle is gone, and its session ends instead of waiting forever.
	ping, idle := r.wsPing, r.wsIdle
	_ = conn.SetReadDeadline(time.Now().Add(idle))
	conn.SetPongHandler(func(string) error { return conn.SetReadDeadline(time.Now().Add(idle)) })
	workers.Add(1)
	go func() {
		defer workers.Done()
		t := time.NewTicker(ping)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second)) != nil {
					return
				}
			}
		}
	}()
	for {
		typ, msg, err := conn.ReadMessage()
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(idle))
		}
		if err != nil {
			if err == websocket.ErrReadLimit {
				write(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseMessageTooBig, "message larger than the relay's limit"))
			}
			return
		}
		if typ != websocket.TextMessage && typ != websocket.BinaryMessage {
			continue
		}
		p, perr := acapy.ParsePacked(msg)
		if perr != nil {
			r.requests.WithLabelValues(acapy.TransportWS, outRejected).Inc()
			write(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseUnsupportedData, closeReason(perr.Error())))
			return
		}
		if !p.ReturnRoute {
			if res := r.queue(ctx, p, msg, acapy.TransportWS); res.Status != 200 {
				write(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseTryAgainLater, closeReason(res.Reason)))
				return
			}
			continue
		}
		// A direct response may take seconds: wait beside the read loop, so that the connection
		// keeps taking messages meanwhile.
		workers.Add(1)
		go func(p acapy.Packed, msg []byte) {
			defer workers.Done()
			res := r.queue(ctx, p, msg, acapy.TransportWS)
			if res.Response != nil && len(res.Response.Body) > 0 {
				write(websocket.BinaryMessage, res.Response.Body)
			}
		}(p, msg)
	}
}

// WebSocket keepalive defaults: ping interval, and the silence after which a peer counts as gone.
const (
	wsPing = 10 * time.Second
	wsIdle = 35 * time.Second
)

// closeReason fits a reason into a close frame (at most 123 bytes).
func closeReason(s string) string {
	if len(s) > 123 {
		s = s[:120] + "..."
	}
	return s
}
