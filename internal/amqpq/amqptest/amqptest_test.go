package amqptest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestRestartKeepsDurableMessages: a persistent message on a durable queue outlives Stop and
// Restart; while stopped the port refuses connections; rabbitmqctl reaches the node.
func TestRestartKeepsDurableMessages(t *testing.T) {
	s := Start(t)
	conn, err := amqp.Dial(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("kept", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", "kept", false, false,
		amqp.Publishing{Body: []byte("survivor"), DeliveryMode: amqp.Persistent})
	if err != nil {
		t.Fatal(err)
	}
	if !dc.Wait() {
		t.Fatal("publish not confirmed")
	}
	if out, err := s.Ctl("list_queues", "name", "messages"); err != nil || !strings.Contains(out, "kept") {
		t.Fatalf("rabbitmqctl list_queues: %v\n%s", err, out)
	}

	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	began := time.Now()
	s.Stop()
	t.Logf("stopped in %s", time.Since(began).Round(10*time.Millisecond))
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's connection stayed open after Stop")
	}
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("the port accepts connections while the node is stopped")
	}

	s.Restart()
	conn, err = amqp.Dial(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err = conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get("kept", true)
	if err != nil || !ok || string(d.Body) != "survivor" {
		t.Fatalf("after restart: %q %v %v, want the persistent message", d.Body, ok, err)
	}
}
