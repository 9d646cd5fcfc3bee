package main

import (
	"github.com/heraldhq/herald/internal/callbacks"
	"github.com/heraldhq/herald/internal/config"
)

func runCallbacks(args []string) int {
	return runService(service[config.Callbacks]{
		name: "callbacks",
		about: `Usage: herald callbacks [flags]

Replaces the Stellar Anchor Platform's event processor: reads the events of the Kafka topic
TRANSACTION and delivers them, each destination through a consumer group of its own
(group-callback-api, group-client-status-callback-<client name>), committing offsets only once
an event is handled.

  business server   POST {callback_api.base_url}/event {"id", "timestamp", "type", "payload"},
                    auth none, api_key (X-Api-Key or the configured header) or jwt (HS256 Bearer,
                    iat and exp only, a fresh token per request)
  client callbacks  a client's transactions to callback_urls.sep6/sep24/sep31 as
                    {"transaction": {...}}, its customers to sep12, with the header
                    Signature: t=<unix>, s=<base64 Ed25519 of "<t>.<host>.<body>"> (SEP-10 key)

One transaction's events go out in order; a failing callback is retried with a doubling backoff
(Retry-After honoured on 429 and 503) and, after HERALD_ATTEMPTS, written to the dead-letter
topic <topic>.<group>.dead, while other transactions keep flowing. Malformed events and events
without a type are skipped and counted. Settings come from the Anchor Platform's YAML
(STELLAR_ANCHOR_CONFIG) and the environment variables of the same keys, which win.
`,
		vars: config.CallbacksVars,
		load: config.LoadCallbacks,
		log:  func(c config.Callbacks) (string, string) { return c.LogFormat, c.LogLevel },
		run:  callbacks.Run,
	}, args)
}
