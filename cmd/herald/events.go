package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/events"
	"github.com/heraldhq/herald/internal/gctune"
)

func runEvents(args []string) int {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	env := envFlags(fs, config.EventsVars)
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, `Usage: herald events [flags]

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
`)
		printVars(os.Stderr, config.EventsVars)
		fmt.Fprintln(os.Stderr, "\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "herald events: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := config.LoadEvents(env)
	if err == nil {
		_, err = events.NewRouter(cfg.Plugin.EventTopicMaps)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald events: invalid configuration: %v\n", err)
		return 2
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel)
	gctune.Apply()
	ctx, cancel := signalContext(log)
	defer cancel()
	if err := events.Run(ctx, cfg, log); err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			fmt.Fprintf(os.Stderr, "herald events: invalid configuration: %v\n", err)
			return 2
		}
		log.Error("herald events failed", "err", err)
		return 1
	}
	return 0
}
