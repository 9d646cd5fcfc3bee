package natsq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KeyHeader carries a Publication's Key, when it has one: NATS has no record key of its own.
const KeyHeader = "Herald-Key"

const (
	// pubWindow bounds the acks one Publish call waits for at a time: a batch of a few hundred
	// goes out in one round trip, a huge one does not fill nats.go's table of pending acks.
	pubWindow = 1024
	// pubMaxPending is that table's size, shared by every concurrent Publish.
	pubMaxPending = 8 * pubWindow
	// pubAckTimeout fails an ack that never comes, for a caller without a deadline, and frees
	// the slots of acks abandoned by callers whose context ended.
	pubAckTimeout = 30 * time.Second
)

// PublisherOptions name the stream a Publisher writes to.
type PublisherOptions struct {
	// Stream is created when missing, with Subjects, limits retention and file storage. An
	// existing stream keeps its configuration, except that Subjects it does not cover yet are
	// added. Empty: streams are left alone and must already cover what is published.
	Stream   string
	Subjects []string
}

// Publisher is an engine.Publisher over JetStream: a Publication's Dest is the subject. It
// publishes asynchronously and waits for every ack, so a batch costs one round trip.
type Publisher struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// NewPublisher returns a Publisher on nc, creating or completing its stream.
func NewPublisher(ctx context.Context, nc *nats.Conn, o PublisherOptions) (*Publisher, error) {
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(pubMaxPending),
		jetstream.WithPublishAsyncTimeout(pubAckTimeout))
	if err != nil {
		return nil, err
	}
	if o.Stream != "" {
		if err := ensureStream(ctx, js, o); err != nil {
			return nil, fmt.Errorf("natsq: stream %s: %w", o.Stream, err)
		}
	}
	return &Publisher{nc: nc, js: js}, nil
}

// ensureStream creates o's stream or adds the subjects it lacks, leaving the rest of an existing
// stream's configuration (retention, limits, replicas) as its operator set it.
func ensureStream(ctx context.Context, js jetstream.JetStream, o PublisherOptions) error {
	for attempt := 0; ; attempt++ {
		s, err := js.Stream(ctx, o.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = js.CreateStream(ctx, jetstream.StreamConfig{
				Name: o.Stream, Subjects: o.Subjects,
				Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			})
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && attempt == 0 {
				continue // another instance created it in the meantime: complete that one
			}
			return err
		}
		if err != nil {
			return err
		}
		cfg := s.CachedInfo().Config
		grown := false
		for _, want := range o.Subjects {
			if !slices.ContainsFunc(cfg.Subjects, func(have string) bool { return subjectCovers(have, want) }) {
				cfg.Subjects = append(cfg.Subjects, want)
				grown = true
			}
		}
		if !grown {
			return nil
		}
		_, err = js.CreateOrUpdateStream(ctx, cfg)
		return err
	}
}

// subjectCovers reports whether every subject that sub matches is matched by pat too. JetStream
// refuses a stream whose subjects overlap, so a subject already within a wildcard of the stream
// must not be added beside it.
func subjectCovers(pat, sub string) bool {
	p, s := strings.Split(pat, "."), strings.Split(sub, ".")
	for i, tok := range p {
		if tok == ">" {
			return i < len(s)
		}
		if i >= len(s) || s[i] == ">" || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

// Publish implements engine.Publisher. While the connection is down it waits for it until ctx
// ends rather than publish into nats.go's reconnect buffer, so that a call failing in an outage
// leaves no copies behind to be stored once the connection is back.
func (p *Publisher) Publish(ctx context.Context, ps []engine.Publication) error {
	if len(ps) == 0 {
		return nil
	}
	if err := awaitConnection(ctx, p.nc, 0); err != nil {
		return err
	}
	stall := pubAckTimeout
	if d, ok := ctx.Deadline(); ok {
		if stall = time.Until(d); stall <= 0 {
			return ctx.Err()
		}
	}
	// nats.go retries a publish answered with "no responders" by itself, later, which would
	// store it after the entries that followed it; failing the call keeps the order, and the
	// caller's retry duplicates instead.
	opts := []jetstream.PublishOpt{jetstream.WithRetryAttempts(0), jetstream.WithStallWait(stall)}

	size := 0
	for i := range ps {
		size += len(ps[i].Body)
	}
	// nats.go keeps every message with its pending ack, after Publish returned on ctx too, while
	// the caller reuses its buffers at once: copying the bodies into storage of this call's own
	// keeps the contract whatever nats.go does with them, for one allocation per call.
	arena := make([]byte, 0, size)
	futures := make([]jetstream.PubAckFuture, 0, len(ps))
	acked := 0
	for i := range ps {
		if len(futures)-acked == pubWindow {
			if err := awaitAck(ctx, futures[acked]); err != nil {
				return err
			}
			acked++
		}
		start := len(arena)
		arena = append(arena, ps[i].Body...)
		msg := &nats.Msg{Subject: string(ps[i].Dest), Data: arena[start:len(arena):len(arena)]}
		if len(ps[i].Key) > 0 {
			msg.Header = nats.Header{KeyHeader: []string{string(ps[i].Key)}}
		}
		f, err := p.js.PublishMsgAsync(msg, opts...)
		if err != nil {
			return fmt.Errorf("natsq: publish to %s: %w", msg.Subject, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures[acked:] {
		if err := awaitAck(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

func awaitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return fmt.Errorf("natsq: publish to %s: %w", f.Msg().Subject, err)
	case <-ctx.Done():
		return fmt.Errorf("natsq: waiting for JetStream to store a publication: %w", ctx.Err())
	}
}
