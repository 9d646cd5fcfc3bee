package redisq

import "testing"

func TestSlot(t *testing.T) {
	for key, want := range map[string]uint16{
		"foo":                  12182,
		"123456789":            12739,
		"{foo}bar":             12182,
		"foo{}{bar}":           Slot("foo{}{bar}"),
		"{acapy_outbound}:x":   Slot("acapy_outbound"),
		"{}acapy_outbound":     Slot("{}acapy_outbound"),
		"acapy_outbound_retry": Slot("{acapy_outbound_retry}:pump:1"),
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
	k := NewKeys("acapy_outbound", "acapy_outbound_retry", "")
	if Slot(k.Inflight("abc")) != Slot(k.Queue) || Slot(k.Dead) != Slot(k.Queue) || Slot(k.leases) != Slot(k.Queue) {
		t.Error("in-flight, dead and lease keys must share the queue's slot")
	}
	if Slot(k.Staging("abc")) != Slot(k.RetrySet) || Slot(k.pumpLeases) != Slot(k.RetrySet) {
		t.Error("staging and pump lease keys must share the retry set's slot")
	}
	tagged := NewKeys("{q}list", "{q}retry", "")
	if tagged.Inflight("a") != "{q}list:inflight:a" {
		t.Errorf("a tagged queue keeps its tag: %s", tagged.Inflight("a"))
	}
}
