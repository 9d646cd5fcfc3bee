package e2e

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/redistest"
)

// TestSlowClientIsCutOff: a client sending its request a byte at a time is disconnected after
// HERALD_READ_TIMEOUT, on the relay and the events listeners alike, while others are served.
func TestSlowClientIsCutOff(t *testing.T) {
	t.Parallel()
	url := redistest.Standalone(t).URL()
	register(t, client(t, url), "uid")
	r := startRelay(t, url, "acapy", "HERALD_READ_TIMEOUT=2s")
	e := startEvents(t, url, "HERALD_READ_TIMEOUT=2s")
	for name, addr := range map[string]string{"relay": "127.0.0.1:" + r.http, "events": e.addr} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		closed := make(chan time.Duration, 1)
		start := time.Now()
		go func() {
			_, _ = io.ReadAll(conn) // returns when the server closes the connection
			closed <- time.Since(start)
		}()
		req := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"slow\": \"" + strings.Repeat("x", 200)
	drip:
		for i := 0; i < len(req); i++ {
			select {
			case took := <-closed:
				if took > 5*time.Second {
					t.Errorf("%s: cut off after %s", name, took)
				}
				break drip
			case <-time.After(250 * time.Millisecond):
				if _, err := conn.Write([]byte{req[i]}); err != nil {
					break drip // the server has closed the connection
				}
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: a slow client held the connection for 10 s", name)
			}
		}
	}
	// Others are served meanwhile and after.
	if code, _ := e.post(t, "/v1/events", `{"topic": "acapy::ping::received", "payload": {}}`); code != 202 {
		t.Errorf("events after the slow client: %d", code)
	}
}

// TestNoSecretsInLogs: at the default (info) level, no service logs the Redis password, a webhook
// API key or any payload, even when entries are dead-lettered.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	const password, apiKey, marker = "s3cret-pw-4711", "KEY-SECRET-0815", "PAYLOAD-MARKER-2342"
	srv := redistest.Standalone(t, redistest.Args("--requirepass", password))
	url := "redis://:" + password + "@" + srv.Addr()
	c := client(t, url)
	register(t, c, "uid")
	recv := newReceiver(t, 1)
	d := start(t, referenceEnv(url, "acapy", freePort(t), "k"), "deliver")
	e := startEvents(t, url, "HERALD_WEBHOOK_URLS="+recv.URL()+"#"+apiKey)
	r := startRelay(t, url, "acapy")

	if code, _ := e.post(t, "/v1/events", `{"topic": "acapy::basicmessage::received", "payload": {"content": "`+marker+`"}, "wallet_id": "w"}`); code != 202 {
		t.Fatalf("event: %d", code)
	}
	eventually(t, 10*time.Second, "the webhook delivered", func() bool { return recv.Total() == 1 })
	if code, _, _ := r.post(t, packed([]string{"Key" + marker}, 1, "")); code != 200 {
		t.Fatalf("relay: %d", code)
	}
	// Entries that fail, with the marker inside: malformed, and a receiver that refuses.
	_ = c.Do(context.Background(), c.B().Rpush().Key("acapy_outbound").Element(`{"service": {"url": "http://x/"}, "payload": "`+marker+`!!"}`).Build()).Error()
	_ = c.Do(context.Background(), c.B().Rpush().Key("acapy_outbound").Element(`{"service": {"url": "ftp://x/`+marker+`"}, "payload": "e30="}`).Build()).Error()
	eventually(t, 10*time.Second, "two entries dead-lettered", func() bool { return llen(t, c, "{acapy_outbound}:dead") == 2 })
	time.Sleep(200 * time.Millisecond)

	for name, log := range map[string]string{"deliver": d.log.String(), "events": e.log.String(), "relay": r.log.String()} {
		for _, secret := range []string{password, apiKey} {
			if strings.Contains(log, secret) {
				t.Errorf("%s logs a secret:\n%s", name, log)
			}
		}
		// The one place an endpoint appears is a dead-letter warning, and it names the receiver,
		// which the ftp:// entry here made carry the marker; payloads never appear.
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, marker) && !strings.Contains(line, "url=ftp://x/"+marker) {
				t.Errorf("%s logs a payload: %s", name, line)
			}
		}
	}
}
