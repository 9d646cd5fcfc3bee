package recipkey

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
)

// Mediator is the Sink of `herald deliver` in mediator mode (the plugin's outbound.mediator_mode):
// a packed DIDComm message is not POSTed but queued for the instance that owns its recipient key,
// as {"payload": ...} on <topic>_<recipient key>, with the same bookkeeping as the relay. ACA-Py
// can then run with mediator_mode off and let Herald do the routing in one atomic script instead
// of the plugin's racy round trips.
//
// Entries whose payload is no packed message at all (webhook events, say) go to Next unchanged,
// so one deliverer serves both. A packed message with a broken header is dead-lettered.
type Mediator struct {
	Assigner *Assigner
	// Topic is the outbound topic; messages go to <Topic>_<recipient key>.
	Topic string
	// Timeout bounds the two Redis calls of one message.
	Timeout time.Duration
	// Next delivers what is not a packed message.
	Next engine.Sink

	bufs sync.Pool
}

// Deliver implements engine.Sink.
func (m *Mediator) Deliver(msg *engine.Message) engine.Result {
	p, err := acapy.ParsePacked(msg.Payload)
	if err != nil {
		var ie *acapy.InboundError
		if errors.As(err, &ie) && ie.NotPacked {
			return m.Next.Deliver(msg)
		}
		return engine.Result{Err: errors.New("mediator mode: " + err.Error()), Permanent: true}
	}
	bp, _ := m.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	entry := acapy.AppendMediatorOutbound((*bp)[:0], msg.Payload)
	timeout := m.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err = m.Assigner.Queue(ctx, m.Topic, p.RecipientKey, entry)
	cancel()
	*bp = entry
	m.bufs.Put(bp)
	if err != nil {
		// Retried on the reference schedule: an instance may register, Redis may come back.
		return engine.Result{Err: errors.New("mediator mode: " + err.Error())}
	}
	return engine.Result{}
}
