// Package acapytest completes the engine's conformance suite for a broker carrying ACA-Py
// outbound entries: the entries a producer writes, the deliverer's decoder, and Herald's dead
// letters, the same for every adapter.
package acapytest

import (
	"testing"

	"github.com/heraldhq/herald/engine/enginetest"
	"github.com/heraldhq/herald/internal/acapy"
)

// Queue fills q's Entry, Decode and Dead; dead returns the dead-letter entries the broker holds,
// oldest first.
func Queue(q *enginetest.Queue, dead func(t testing.TB) [][]byte) *enginetest.Queue {
	q.Entry = func(payload []byte) []byte { return acapy.AppendOutbound(nil, "http://receiver/", nil, payload) }
	q.Decode = acapy.DecodeOutbound
	q.Dead = func(t testing.TB) []enginetest.DeadEntry {
		var out []enginetest.DeadEntry
		for _, raw := range dead(t) {
			d, err := acapy.ParseDeadLetter(raw)
			if err != nil {
				t.Fatalf("dead-letter entry %q: %v", raw, err)
			}
			out = append(out, enginetest.DeadEntry{Raw: d.Raw, Reason: d.Reason})
		}
		return out
	}
	return q
}
