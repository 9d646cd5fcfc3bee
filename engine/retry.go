package engine

import (
	"math"
	"time"
)

// RetryPolicy decides what happens after a failed attempt.
type RetryPolicy struct {
	// MaxRetries is how many retries a message gets; the reference gives 5.
	MaxRetries int
	// Interval and Backoff shape the delay of retry n (1-based): Interval ** (1 + Backoff*(n-1))
	// seconds, the reference's 5, 7.5, 11.2, 16.7 and 25 s for Interval 5 and Backoff 0.25.
	Interval float64
	Backoff  float64
	// DropExhausted drops a message that used up its retries, as the reference does, instead of
	// dead-lettering it.
	DropExhausted bool
}

// ReferenceRetryPolicy is the ACA-Py deliverer's schedule, dead-lettering instead of dropping.
var ReferenceRetryPolicy = RetryPolicy{MaxRetries: 5, Interval: 5, Backoff: 0.25}

// Delay is how long to wait before retry number retries (1-based).
func (p RetryPolicy) Delay(retries int) time.Duration {
	s := math.Pow(p.Interval, 1+p.Backoff*float64(retries-1))
	return time.Duration(s * float64(time.Second))
}
