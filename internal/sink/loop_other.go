//go:build !linux

package sink

import "github.com/heraldhq/herald/engine"

// NewLoop returns the pooled Sink: the event loops need epoll, which only Linux has.
func NewLoop(o Options) engine.Sink { return New(o) }
