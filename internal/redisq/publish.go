package redisq

import (
	"context"
	"sync"

	"github.com/heraldhq/herald/engine"
	"github.com/redis/rueidis"
)

// Publisher is the engine.Publisher of Redis: each Publication is an RPUSH of its body onto the
// list its Dest names (Key is not used), all of one call pipelined in one round. rueidis keeps
// the commands of one pipeline in order on a connection, so entries for one list stay in order.
type Publisher struct {
	c    rueidis.Client
	cmds sync.Pool
}

// NewPublisher returns a Publisher writing through c.
func NewPublisher(c rueidis.Client) *Publisher { return &Publisher{c: c} }

// Publish implements engine.Publisher.
func (p *Publisher) Publish(ctx context.Context, ps []engine.Publication) error {
	if len(ps) == 0 {
		return nil
	}
	cp, _ := p.cmds.Get().(*rueidis.Commands)
	if cp == nil {
		cp = new(rueidis.Commands)
	}
	cmds := (*cp)[:0]
	for i := range ps {
		// The commands point into the caller's buffers; DoMulti has written them when it returns.
		cmds = append(cmds, p.c.B().Rpush().Key(rueidis.BinaryString(ps[i].Dest)).Element(rueidis.BinaryString(ps[i].Body)).Build())
	}
	var first error
	for _, r := range p.c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil && first == nil {
			first = err
		}
	}
	clear(cmds)
	*cp = cmds[:0]
	p.cmds.Put(cp)
	return first
}
