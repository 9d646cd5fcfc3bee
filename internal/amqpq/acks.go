package amqpq

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"time"
)

// ackLinger bounds how long an acknowledgment waits for the ones before it. A process that
// dies meanwhile has those messages redelivered (duplicates, which at-least-once allows); a
// graceful Close sends them first.
const ackLinger = 100 * time.Millisecond

// ackPace is the least time between two rounds of acknowledgments. At the broker's drain rate
// it costs a prefetch window of a thousand a few dozen slots, and makes each multiple ack cover
// dozens of deliveries where rounds run back to back cover a handful.
const ackPace = time.Millisecond

// acks sends the acknowledgments of one consuming channel. On a durable queue the broker's
// queue process, which runs on one core whatever the number of consumers, spends about a third
// less per message when acknowledgments come as basic.ack multiple=true than one by one, and
// that process is what bounds the drain rate. An ack with multiple=true covers every earlier
// unacknowledged tag of the channel, so it may only be sent up to a tag before which every
// delivery was settled here: acks keeps that floor and sends one multiple ack whenever it
// advances.
//
// Deliveries settle out of order (hundreds in flight, one of them slow), so an acknowledgment
// above a gap is held back, but not for long: past ackLinger, or once so many are held that the
// prefetch window would run dry, the held ones go out one by one. A release (a nack that
// requeues) goes out at once; every ack and nack of the channel is sent under mu, so a multiple
// ack that counts a released tag as settled is on the wire after its nack and cannot swallow it.
type acks struct {
	ch    settler
	limit int // held acknowledgments that go out at once rather than wait for the floor
	epoch time.Time

	mu    sync.Mutex
	floor uint64 // every tag up to floor is settled on the wire
	// The tags above floor, 64 to a word from base (a word drops off whole once the floor
	// passes it).
	base  uint64
	words []ackWord
	nheld int
	err   error // the first send that failed: the channel is going, and nothing more is sent

	wake chan struct{}
}

type ackWord struct {
	settled uint64        // acknowledged or released, on the wire or held
	held    uint64        // acknowledged here, not yet on the wire
	since   time.Duration // after epoch, when the oldest of held was recorded
}

// settler is what acks needs of an *amqp.Channel.
type settler interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

func newAcks(ch settler, prefetch int) *acks {
	return &acks{ch: ch, limit: max(prefetch/2, 1), epoch: time.Now(), base: 1, wake: make(chan struct{}, 1)}
}

var errSettled = errors.New("amqpq: delivery already settled")

// word locates an unsettled tag above the floor; ok is false for a settled one.
func (a *acks) word(tag uint64) (w *ackWord, bit uint64, ok bool) {
	if tag <= a.floor {
		return nil, 0, false
	}
	off := tag - a.base
	for uint64(len(a.words)) <= off/64 {
		a.words = append(a.words, ackWord{})
	}
	w, bit = &a.words[off/64], 1<<(off%64)
	return w, bit, w.settled&bit == 0
}

// ack records that tag was handled; the broker hears of it within ackLinger.
func (a *acks) ack(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, bit, ok := a.word(tag)
	if !ok {
		return errSettled
	}
	if w.held == 0 {
		w.since = time.Since(a.epoch)
	}
	w.settled |= bit
	w.held |= bit
	a.nheld++
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return nil
}

// release puts tag back in the queue now.
func (a *acks) release(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, bit, ok := a.word(tag)
	if !ok {
		return errSettled
	}
	if err := a.ch.Nack(tag, false, true); err != nil {
		return err
	}
	w.settled |= bit
	return nil
}

// run sends acknowledgments until stop closes; whatever is held then goes out with the channel
// (the broker takes those deliveries back), unless flush sent it first.
func (a *acks) run(stop <-chan struct{}) {
	linger := time.NewTimer(ackLinger)
	defer linger.Stop()
	pace := time.NewTimer(0)
	defer pace.Stop()
	for {
		select {
		case <-stop:
			return
		case <-a.wake:
		case <-linger.C:
		}
		a.mu.Lock()
		sent := a.advance()
		oldest, any := a.oldest()
		if any && (a.nheld >= a.limit || time.Since(a.epoch)-oldest >= ackLinger) {
			a.sendHeld()
			sent, any = true, false
		}
		if any {
			linger.Reset(max(oldest+ackLinger-time.Since(a.epoch), time.Millisecond))
		} else {
			linger.Stop() // an idle consumer sleeps until the next ack wakes it
		}
		a.mu.Unlock()
		if !sent {
			continue
		}
		// A lone acknowledgment went out at once; what comes in the next ackPace goes together.
		pace.Reset(ackPace)
		select {
		case <-stop:
			return
		case <-pace.C:
		}
	}
}

// advance moves the floor over the settled tags just above it and acknowledges the held ones
// among them with one multiple ack, named by the highest held tag: the frame must name a tag
// the broker still counts as unacknowledged. It reports whether it sent anything.
func (a *acks) advance() bool {
	var top uint64
	for len(a.words) > 0 {
		off := a.floor + 1 - a.base
		if off == 64 { // the first word is wholly behind the floor
			a.words = a.words[1:]
			a.base += 64
			continue
		}
		w := &a.words[0]
		n := bits.TrailingZeros64(^(w.settled >> off)) // the run of settled tags from floor+1
		if n == 0 {
			break
		}
		run := uint64(1<<n-1) << off // 1<<64 is 0 for a uint64: all ones
		if h := w.held & run; h != 0 {
			top = a.base + uint64(63-bits.LeadingZeros64(h))
			a.nheld -= bits.OnesCount64(h)
			w.held &^= h
		}
		a.floor += uint64(n)
	}
	if top == 0 {
		return false
	}
	a.send(top, true)
	return true
}

// oldest is when the oldest held acknowledgment was recorded; any is false when none is held.
func (a *acks) oldest() (oldest time.Duration, any bool) {
	for i := range a.words {
		if w := &a.words[i]; w.held != 0 && (!any || w.since < oldest) {
			oldest, any = w.since, true
		}
	}
	return oldest, any
}

// sendHeld acknowledges every held tag on its own: the gaps below them are deliveries still
// in progress, which must stay unacknowledged.
func (a *acks) sendHeld() {
	for i := range a.words {
		w := &a.words[i]
		for h := w.held; h != 0; h &= h - 1 {
			a.send(a.base+uint64(i*64+bits.TrailingZeros64(h)), false)
		}
		w.held = 0
	}
	a.nheld = 0
}

func (a *acks) send(tag uint64, multiple bool) {
	if a.err != nil {
		return
	}
	if err := a.ch.Ack(tag, multiple); err != nil {
		a.err = fmt.Errorf("acknowledging delivery %d: %w", tag, err)
	}
}

// flush sends every held acknowledgment now, before the channel is closed on purpose.
func (a *acks) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.advance()
	a.sendHeld()
}
