package acapy

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

type inboundVectors struct {
	Inbound []struct {
		List           string `json:"list"`
		Entry          string `json:"entry"`
		DirectResponse bool   `json:"direct_response"`
	} `json:"inbound"`
	DirectResponse []struct {
		List      string `json:"list"`
		Entry     string `json:"entry"`
		HTTPReply string `json:"http_reply_body"`
	} `json:"direct_response"`
	PackedBody string `json:"inbound_request_body_packed_message"`
}

func loadInboundVectors(t testing.TB) inboundVectors {
	b, _ := loadVectors(t)
	var v inboundVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestInboundVectors rebuilds every inbound entry byte for byte from the request body the vectors
// give, and reads the list name from the body's recipients.
func TestInboundVectors(t *testing.T) {
	v := loadInboundVectors(t)
	body := []byte(v.PackedBody)
	p, err := ParsePacked(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range v.Inbound {
		if want := "acapy_inbound_" + p.RecipientKey; c.List != want {
			t.Errorf("list %s, want %s", c.List, want)
		}
		var e struct {
			Payload   string `json:"payload"`
			TxnID     string `json:"txn_id"`
			Transport string `json:"transport_type"`
		}
		if err := json.Unmarshal([]byte(c.Entry), &e); err != nil {
			t.Fatal(err)
		}
		if e.TxnID != "" != c.DirectResponse {
			t.Fatalf("vector disagrees with itself: %s", c.Entry)
		}
		if got := string(AppendInbound(nil, body, e.TxnID, e.Transport)); got != c.Entry {
			t.Errorf("\n got %s\nwant %s", got, c.Entry)
		}
	}
	if p.ReturnRoute {
		t.Error("the packed vector has no ~transport; no direct response")
	}
}

func TestParsePackedReturnRoute(t *testing.T) {
	protected := base64.RawURLEncoding.EncodeToString([]byte(`{"recipients": [{"header": {"kid": "A"}}, {"header": {"kid": "B"}}]}`))
	for transport, want := range map[string]bool{
		``: false,
		`, "~transport": {"return_route": "all"}`:                     true,
		`, "~transport": {"return_route": "thread"}`:                  true,
		`, "~transport": {"return_route": "none"}`:                    false,
		`, "~transport": {"return_route": ""}`:                        false,
		`, "~transport": {}`:                                          false,
		`, "~transport": "all"`:                                       false,
		`, "~transport": {"return_route": true}`:                      true,
		`, "~transport": {"return_route": false}`:                     false,
		`, "~transport": {"return_route": null}`:                      false,
		`, "~transport": {"return_route": 0}`:                         false,
		`, "~transport": {"return_route": 0.0e3}`:                     false,
		`, "~transport": {"return_route": -2}`:                        true,
		`, "~transport": {"return_route": []}`:                        false,
		`, "~transport": {"return_route": [0]}`:                       true,
		`, "~transport": {"return_route": {"a": 1}}`:                  true,
		`, "~transport": {"return_route": "\u006eone"}`:               false,
		`, "~transport": {"x": [1, {"y": 2}], "return_route": "all"}`: true,
		`, "~transport": null`:                                        false,
	} {
		p, err := ParsePacked([]byte(`{"protected": "` + protected + `"` + transport + `}`))
		if err != nil {
			t.Fatalf("%s: %v", transport, err)
		}
		if p.RecipientKey != "A,B" || p.ReturnRoute != want {
			t.Errorf("%q: %+v, want return route %v", transport, p, want)
		}
	}
}

func TestParsePackedMalformed(t *testing.T) {
	enc := func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }
	for body, reason := range map[string]string{
		`not json`:                          "not JSON",
		`[1]`:                               "not a JSON object",
		`{"iv": "x"}`:                       "no protected",
		`{"protected": 5}`:                  "not a string",
		`{"protected": "***"}`:              "base64",
		`{"protected": "` + enc(`x`) + `"}`: "not the JSON",
		`{"protected": "` + enc(`{"recipients": []}`) + `"}`:                        "no recipients",
		`{"protected": "` + enc(`{"recipients": [{"header": {}}]}`) + `"}`:          "no header.kid",
		`{"protected": "` + enc(`{"recipients": [{"header": {"kid": ""}}]}`) + `"}`: "no header.kid",
		`{"protected": "` + enc(`{"recipients": [{"header": {"kid": 7}}]}`) + `"}`:  "no header.kid",
		`{"protected": "` + enc(`{"recipients": ["A"]}`) + `"}`:                     "no header.kid",
		`{"protected": "` + enc(`{"recipients": [{"header": {"kid": "A"}}]`) + `"}`: "not the JSON",
		`{"protected": "x"} trailing`:                                               "not JSON",
		`{"protected": "x"`:                                                         "not JSON",
		``:                                                                          "not JSON",
		`"a string"`:                                                                "not a JSON object",
	} {
		_, err := ParsePacked([]byte(body))
		if err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("%s: %v, want a reason with %q", body, err, reason)
		}
	}
}

func TestParsePackedKeys(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for header, want := range map[string]string{
		`{"recipients": [{"header": {"kid": "A"}}]}`:                                                                "A",
		`{"recipients": [{"encrypted_key": "x", "header": {"sender": "s", "kid": "A"}}, {"header": {"kid": "B"}}]}`: "A,B",
		`{"alg": {"nested": [1, 2]}, "recipients": [{"header": {"kid": "\u0041b"}}]}`:                               "Ab",
		`{"recipients": [{"header": {"kid": "old"}}], "recipients": [{"header": {"kid": "new"}}]}`:                  "new",
	} {
		p, err := ParsePacked([]byte(`{"protected": "` + enc(header) + `", "iv": "aXY"}`))
		if err != nil || p.RecipientKey != want {
			t.Errorf("%s: %q %v, want %q", header, p.RecipientKey, err, want)
		}
	}
}

func BenchmarkParsePacked(b *testing.B) {
	body := []byte(loadInboundVectors(b).PackedBody)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParsePacked(body); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDirectResponseVectors(t *testing.T) {
	v := loadInboundVectors(t)
	for _, c := range v.DirectResponse {
		r, err := ParseDirectResponse([]byte(c.Entry))
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Body) != c.HTTPReply || r.TxnID == "" || r.ContentType != "application/didcomm-envelope-enc" {
			t.Errorf("%s: %+v", c.Entry, r)
		}
	}
	// The reference relay's spelling of the content type key is read too.
	r, err := ParseDirectResponse([]byte(`{"txn_id": "t", "response_data": {"content_type": "application/json", "response": "e30"}}`))
	if err != nil || r.ContentType != "application/json" || string(r.Body) != "{}" {
		t.Errorf("content_type: %+v %v", r, err)
	}
	for _, bad := range []string{`x`, `{}`, `{"txn_id": "t"}`, `{"txn_id": "t", "response_data": {"response": "***"}}`} {
		if _, err := ParseDirectResponse([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestMediatorOutboundEntry(t *testing.T) {
	if got := string(AppendMediatorOutbound(nil, []byte("ab?"))); got != `{"payload": "YWI_"}` {
		t.Errorf("got %s", got)
	}
}
