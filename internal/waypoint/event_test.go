package waypoint

import (
	"testing"
	"time"
)

func TestParseEventOrdersKeysAndCompacts(t *testing.T) {
	at := time.Unix(1700000000, 0)
	for _, c := range []struct{ in, frame string }{
		{`{"payload": {"state": "done", "proof_id": "p 1", "n": [1, 2]}, "group_id": "g1", "topic": "proofs", "origin": "tenant", "wallet_id": "w1"}`,
			`data: {"wallet_id":"w1","topic":"proofs","origin":"tenant","group_id":"g1","payload":{"state":"done","proof_id":"p 1","n":[1,2]}}` + "\n\n"},
		{`{"wallet_id":"w1","topic":"proofs","payload":{"state":"done"}}`,
			`data: {"wallet_id":"w1","topic":"proofs","origin":null,"group_id":null,"payload":{"state":"done"}}` + "\n\n"},
		{`{"wallet_id":"w\u00e9","topic":"basic-messages","origin":null,"group_id":null,"payload":{"state":"received","content":"h\u00e9"}}`,
			`data: {"wallet_id":"w\u00e9","topic":"basic-messages","origin":null,"group_id":null,"payload":{"state":"received","content":"h\u00e9"}}` + "\n\n"},
	} {
		e, err := ParseEvent([]byte(c.in), at)
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if string(e.Frame) != c.frame {
			t.Errorf("frame\n got %s\nwant %s", e.Frame, c.frame)
		}
		if !e.At.Equal(at) {
			t.Errorf("At %v", e.At)
		}
	}
	e, _ := ParseEvent([]byte(`{"wallet_id":"w\u00e9","topic":"basic-messages","payload":{"state":"received"}}`), at)
	if e.Wallet != "wé" || e.Topic != "basic-message" || e.State != "received" || e.Group != "" {
		t.Fatalf("parsed %+v", e)
	}
}

func TestParseEventRefusesBadEnvelopes(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `{"wallet_id":"w"`, `{"wallet_id":"w","topic":"t"}`, `{"wallet_id":"w","topic":"t","payload":[1]}`,
		`{"wallet_id":1,"topic":"t","payload":{}}`, `{"wallet_id":"w","topic":null,"payload":{}}`,
		`{"wallet_id":"w","topic":"t","group_id":{},"payload":{}}`,
	} {
		if e, err := ParseEvent([]byte(in), time.Now()); err == nil {
			t.Errorf("%q parsed: %+v", in, e)
		}
	}
}

func TestMemberText(t *testing.T) {
	p := []byte(`{"s":"a\"b","n":42,"f":1.50,"b":true,"z":null,"o":{"x":1}}`)
	for _, c := range []struct {
		name, want string
		ok         bool
	}{{"s", `a"b`, true}, {"n", "42", true}, {"f", "1.50", true}, {"b", "true", true}, {"z", "", false}, {"o", "", false}, {"missing", "", false}} {
		if got, ok := member(p, c.name); string(got) != c.want || ok != c.ok {
			t.Errorf("member %q: %q %v, want %q %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestParseEntryOfThePlugin(t *testing.T) {
	for _, c := range []struct{ in, wallet, topic, state, frame string }{
		{`{"payload": {"wallet_id": "w1", "state": "presentation_received", "topic": "acapy::record::present_proof_v2_0::presentation_received", "category": "present_proof_v2_0", "payload": {"state": "presentation_received", "pres_ex_id": "p1"}}, "metadata": {"x-wallet-id": "w1"}}`,
			"w1", "proofs", "presentation-received",
			`data: {"wallet_id":"w1","topic":"proofs","origin":null,"group_id":null,"payload":{"state":"presentation_received","pres_ex_id":"p1"}}` + "\n\n"},
		{`{"payload": {"wallet_id": "base", "state": "completed", "topic": "acapy::webhook::connections", "category": "webhook", "payload": {"state": "completed"}}, "metadata": {}}`,
			"base", "connections", "completed", ""},
		{`{"payload": {"wallet_id": "w2", "state": null, "topic": "acapy::basicmessage::received", "category": null, "payload": {"content": "hi"}}, "metadata": {}}`,
			"w2", "basic-message", "", ""},
	} {
		e, err := ParseEntry([]byte(c.in), time.Now())
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if e.Wallet != c.wallet || e.Topic != c.topic || e.State != c.state {
			t.Errorf("%s: wallet %q topic %q state %q", c.in, e.Wallet, e.Topic, e.State)
		}
		if c.frame != "" && string(e.Frame) != c.frame {
			t.Errorf("frame\n got %s\nwant %s", e.Frame, c.frame)
		}
	}
	for _, in := range []string{`{}`, `{"payload": {"wallet_id": "w"}}`, `{"payload": {"topic": "t", "payload": {}}}`, `nope`} {
		if _, err := ParseEntry([]byte(in), time.Now()); err == nil {
			t.Errorf("%s parsed", in)
		}
	}
}
