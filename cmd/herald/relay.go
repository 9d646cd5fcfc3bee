package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/recipkey"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/heraldhq/herald/internal/relay"
)

func runRelay(args []string) int {
	return runService(service[config.Relay]{
		name: "relay",
		about: `Usage: herald relay [flags]

Takes DIDComm messages over HTTP (POST /) and WebSocket (each frame) and RPUSHes each, as the
reference relay does, onto <prefix>_inbound_<recipient key>, keeping the plugin's recipient-key
assignment (which ACA-Py instance reads which key) atomically in one Redis script call, which
messages arriving together share. A message whose ~transport.return_route asks for it is answered
with the direct response ACA-Py queues for it. GET / answers 200 (with ?c_i= a note about
invitations). Started with the same environment as the Python relay, it replaces it.

Answers: 200 queued; 400 not a packed message (the reason in the body); 413 larger than
HERALD_MAX_BODY; 503 Redis unreachable or no ACA-Py instance registered yet (Retry-After: 1).
`,
		vars: config.RelayVars,
		load: config.LoadRelay,
		log:  func(c config.Relay) (string, string) { return c.LogFormat, c.LogLevel },
		run:  relay.Run,
		extra: func(fs *flag.FlagSet) func(config.Env) (int, bool) {
			placeKeys := fs.Bool("place-keys", false, "on a Redis Cluster, move the slots of the five recipient-key bookkeeping keys to one primary, then exit")
			return func(env config.Env) (int, bool) {
				if !*placeKeys {
					return 0, false
				}
				return runPlaceKeys(env), true
			}
		},
	}, args)
}

func runPlaceKeys(env config.Env) int {
	url, _ := env("REDIS_SERVER_URL")
	if err := config.CheckRedisURL(url); url == "" || err != nil {
		fmt.Fprintf(os.Stderr, "herald relay: invalid configuration: REDIS_SERVER_URL: %v\n", err)
		return 2
	}
	log := newLogger("text", "info")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := redisq.Connect(ctx, url, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald relay --place-keys: %v\n", err)
		return 1
	}
	defer c.Close()
	moved, err := recipkey.Place(ctx, c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald relay --place-keys: %v\n", err)
		return 1
	}
	if err := recipkey.CheckPlacement(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "herald relay --place-keys: moved slots %v but: %v\n", moved, err)
		return 1
	}
	fmt.Printf("bookkeeping keys share one node; slots moved: %v\n", moved)
	return 0
}
