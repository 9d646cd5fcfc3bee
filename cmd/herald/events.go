package main

import (
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/events"
)

func runEvents(args []string) int {
	return runService(service[config.Events]{
		name: "events",
		about: `Usage: herald events [flags]

Takes ACA-Py's events in over HTTP and does what the redis_events plugin does with them: each event
is routed with event_topic_maps (every pattern that matches the start of the topic, in the file's
order) and its envelope {"payload": {...}, "metadata": {...}} RPUSHed to the list the template
names; with deliver_webhook and webhook URLs, the topics of event_webhook_topic_maps also become
outbound entries for herald deliver. A request is answered 202 only once Redis holds every entry.

  POST /topic/{topic}/  what ACA-Py's --webhook-url sends (the record JSON, x-wallet-id when
                        multitenant): the event acapy::webhook::{topic}, and when the record has a
                        state, acapy::record::{topic}::{state} too
  POST /v1/events       {"topic": ..., "payload": {...}, "wallet_id": ... or null}, or NDJSON of them

Answers: 202 {"events", "pushed", "webhooks"}; 400 with the reason, nothing written; 413 larger than
HERALD_MAX_BODY; 503 Redis unreachable (Retry-After: 1).
`,
		vars: config.EventsVars,
		load: func(env config.Env) (config.Events, error) {
			cfg, err := config.LoadEvents(env)
			if err == nil {
				// The topic maps are compiled now, so that a bad pattern is a configuration error.
				_, err = events.NewRouter(cfg.Plugin.EventTopicMaps)
			}
			return cfg, err
		},
		log: func(c config.Events) (string, string) { return c.LogFormat, c.LogLevel },
		run: events.Run,
	}, args)
}
