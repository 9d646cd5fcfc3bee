package broker

import (
	"slices"
	"testing"
)

func TestSubjects(t *testing.T) {
	got, err := Subjects([]string{"acapy.record-with-state.$wallet_id", "acapy.record.$wallet_id", "acapy.ping.received",
		"acapy.record.x", "acapy.record-with-state.${wallet_id}"})
	if err != nil {
		t.Fatal(err)
	}
	// acapy.record.x is covered by acapy.record.>, which a stream may not hold beside it.
	if want := []string{"acapy.record-with-state.>", "acapy.record.>", "acapy.ping.received"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := Subjects([]string{"acapy-record-$wallet_id"}); err == nil {
		t.Error("a placeholder in the first token cannot be a subject filter: want an error")
	}
}

func TestNames(t *testing.T) {
	if s := streamName("acapy.events.>"); s != "acapy_events_all" {
		t.Errorf("stream name %q", s)
	}
	if s := deadSubject("acapy.events.*"); s != "herald.dead.acapy_events_any" {
		t.Errorf("dead subject %q", s)
	}
}
