package callbacks

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/sign"
	"github.com/valyala/fasthttp"
)

// destination is one consumer group and what it sends for an event: prepare fills req and
// reports whether there is anything to send at all.
type destination struct {
	group   string
	prepare func(e *Event, now time.Time, req *fasthttp.Request) (bool, error)
}

// businessServer posts every event to {base_url}/event with the configured authentication.
func businessServer(c config.Callbacks) (destination, error) {
	var jwt *sign.JWT
	if c.AuthType == "jwt" {
		var err error
		if jwt, err = sign.NewJWT(c.AuthSecret, c.JWTExpiration); err != nil {
			return destination{}, &config.Error{Key: "SECRET_CALLBACK_API_AUTH_SECRET", Reason: err.Error()}
		}
	}
	url := c.BaseURL + "/event"
	return destination{group: "group-callback-api", prepare: func(e *Event, now time.Time, req *fasthttp.Request) (bool, error) {
		var body bytes.Buffer
		body.WriteString(`{"id":`)
		writeString(&body, e.ID)
		body.WriteString(`,"timestamp":`)
		writeString(&body, now.UTC().Format(time.RFC3339Nano))
		body.WriteString(`,"type":`)
		writeString(&body, e.Type)
		body.WriteString(`,"payload":{`)
		sep := ""
		for _, part := range [...]struct {
			name string
			v    json.RawMessage
		}{{"transaction", e.Transaction}, {"quote", e.Quote}, {"customer", e.Customer}} {
			if part.v == nil {
				continue
			}
			body.WriteString(sep + `"` + part.name + `":`)
			body.Write(part.v)
			sep = ","
		}
		body.WriteString("}}")
		req.SetBody(body.Bytes())
		req.SetRequestURI(url)
		switch c.AuthType {
		case "api_key":
			req.Header.Set(c.APIKeyHeader, c.AuthSecret)
		case "jwt":
			req.Header.SetBytesV(c.JWTHeader, jwt.AppendToken([]byte("Bearer "), now))
		}
		return true, nil
	}}, nil
}

// clientCallbacks sends a client its transactions' status changes, to the callback URL of the
// transaction's SEP, and its customers' updates to its SEP-12 URL, signed with the SEP-10 key.
// An event belongs to the client its client_name or client_domain names.
func clientCallbacks(cl config.CallbackClient, signer *sign.Anchor) destination {
	hosts := map[string]string{}
	for _, u := range cl.URLs {
		if h, err := sign.SignedHost(u); err == nil {
			hosts[u] = h
		}
	}
	return destination{group: "group-client-status-callback-" + cl.Name, prepare: func(e *Event, now time.Time, req *fasthttp.Request) (bool, error) {
		if !(e.clientName != "" && e.clientName == cl.Name || e.clientDomain != "" && e.clientDomain == cl.Domain) {
			return false, nil
		}
		var url string
		var body bytes.Buffer
		switch {
		case e.Transaction != nil && (e.Type == "transaction_created" || e.Type == "transaction_status_changed" || e.Type == "transaction_error"):
			url = cl.URLs["sep"+e.txSep]
			body.WriteString(`{"transaction":`)
			body.Write(e.Transaction)
			body.WriteString("}")
		case e.Customer != nil && e.Type == "customer_updated":
			url = cl.URLs["sep12"]
			body.Write(e.Customer)
		}
		if url == "" {
			return false, nil // nothing to send for this event, or no URL for its SEP
		}
		req.SetBody(body.Bytes())
		req.SetRequestURI(url)
		req.Header.SetBytesV("Signature", signer.AppendSignature(nil, now.Unix(), hosts[url], body.Bytes()))
		return true, nil
	}}
}

func writeString(b *bytes.Buffer, s string) {
	q, _ := json.Marshal(s)
	b.Write(q)
}
