// Package redisq is the Redis adapter of the engine: an outbound list as a Source (at-least-once
// through a per-instance in-flight list and lease, or at-most-once like the reference), the retry
// sorted set and its pump, and the dead-letter list. It works against a standalone server and a
// Redis Cluster alike: every step that must be atomic touches keys of one hash slot only.
package redisq

// sameSlot returns a key name that hashes to the same cluster slot as key. A key without a hash
// tag hashes on its whole name, so wrapping that name in braces keeps the slot:
// "acapy_outbound" and "{acapy_outbound}:inflight:x" share one.
func sameSlot(key, suffix string) string {
	if _, ok := hashTag(key); ok {
		return key + suffix
	}
	return "{" + key + "}" + suffix
}

// Keys names every key a queue uses. Only Queue and RetrySet are fixed by ACA-Py; the others are
// derived so that whatever must move atomically lives in one slot.
type Keys struct {
	Queue    string // the outbound list ACA-Py RPUSHes to
	RetrySet string // the retry sorted set shared with reference deliverers
	Dead     string // the dead-letter list

	leases      string // sorted set instance -> lease expiry (ms), in Queue's slot
	pumpLeases  string // the same for the pump's staging lists, in RetrySet's slot
	inflightPfx string
	stagingPfx  string
}

// NewKeys derives the helper keys of a queue. dead may be empty for the default, a list in the
// queue's slot so that dead-lettering and removal from in-flight are one atomic step.
func NewKeys(queue, retrySet, dead string) Keys {
	if dead == "" {
		dead = sameSlot(queue, ":dead")
	}
	return Keys{
		Queue:       queue,
		RetrySet:    retrySet,
		Dead:        dead,
		leases:      sameSlot(queue, ":leases"),
		pumpLeases:  sameSlot(retrySet, ":leases"),
		inflightPfx: sameSlot(queue, ":inflight:"),
		stagingPfx:  sameSlot(retrySet, ":pump:"),
	}
}

// Inflight is the in-flight list of one instance.
func (k Keys) Inflight(instance string) string { return k.inflightPfx + instance }

// Staging is the pump's staging list of one instance.
func (k Keys) Staging(instance string) string { return k.stagingPfx + instance }
