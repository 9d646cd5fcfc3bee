package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/dlq"
	"github.com/heraldhq/herald/internal/redisq"
)

const dlqUsage = `Usage: herald dlq list|show|replay|purge [flags] [index ...]

Reads the dead-letter list herald deliver writes (HERALD_DEAD_LETTER_LIST, by default
{<prefix>_outbound}:dead), with the same environment as herald deliver.

  list     one line per entry: index, when, status, retries, receiver, reason (--json: the entries)
  show     every field of the selected entries, with the original entry decoded
  replay   put the selected entries back on <prefix>_outbound in the reference format, with a fresh
           retry count, and take them off the dead-letter list; replaying again does nothing
  purge    delete the selected entries (asks first unless --yes)

Entries are selected by the filters below and, when given, by their indexes (as list prints them).
`

func runDLQ(args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(os.Stderr, dlqUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return 0
		}
		return 2
	}
	action := args[0]
	switch action {
	case "list", "show", "replay", "purge":
	default:
		fmt.Fprintf(os.Stderr, "herald dlq: unknown action %q; want list, show, replay or purge\n", action)
		return 2
	}
	fs := flag.NewFlagSet("dlq "+action, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	vars := pickVars(config.DeliverVars, "REDIS_SERVER_URL", "TOPIC_PREFIX", "HERALD_DEAD_LETTER_LIST")
	env := envFlags(fs, vars)
	var f dlq.Filter
	fs.StringVar(&f.Reason, "reason", "", "only entries whose reason contains this (case-insensitive)")
	fs.StringVar(&f.Endpoint, "endpoint", "", "only entries whose receiver URL contains this")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "only entries that failed at least this long ago (e.g. 1h)")
	fs.DurationVar(&f.NewerThan, "newer-than", 0, "only entries that failed at most this long ago")
	asJSON := fs.Bool("json", false, "list: print the dead-letter entries themselves, one JSON object per line")
	yes := fs.Bool("yes", false, "purge: do not ask for confirmation")
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, dlqUsage)
		printVars(os.Stderr, vars)
		fmt.Fprintln(os.Stderr, "\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	indexes := map[int]bool{}
	for _, a := range fs.Args() {
		n, err := strconv.Atoi(a)
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "herald dlq %s: %q is not an entry index\n", action, a)
			return 2
		}
		indexes[n] = true
	}
	cfg, err := config.LoadDeliver(env)
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald dlq: invalid configuration: %v\n", err)
		return 2
	}
	keys := redisq.NewKeys(cfg.Redis.TopicPrefix+"_outbound", cfg.Redis.TopicPrefix+"_outbound_retry", cfg.DeadLetter)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := redisq.Connect(ctx, cfg.Redis.URL, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald dlq: cannot reach Redis at %s: %v\n", config.RedactURL(cfg.Redis.URL), err)
		return 1
	}
	defer c.Close()
	ctx, cancel2 := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel2()
	items, err := dlq.List(ctx, c, keys.Dead, f)
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald dlq: %v\n", err)
		return 1
	}
	if len(indexes) > 0 {
		kept := items[:0]
		for _, it := range items {
			if indexes[it.Index] {
				kept = append(kept, it)
			}
		}
		items = kept
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	switch action {
	case "list":
		for _, it := range items {
			if *asJSON {
				fmt.Fprintln(out, it.Raw)
				continue
			}
			printLine(out, it)
		}
		if !*asJSON {
			fmt.Fprintf(out, "%d entries selected in %s\n", len(items), keys.Dead)
		}
	case "show":
		for _, it := range items {
			printDetail(out, it)
		}
		fmt.Fprintf(out, "%d entries selected in %s\n", len(items), keys.Dead)
	case "replay":
		n, err := dlq.Replay(ctx, c, keys.Dead, keys.Queue, items)
		fmt.Fprintf(out, "replayed %d of %d selected entries onto %s\n", n, len(items), keys.Queue)
		if err != nil {
			out.Flush()
			fmt.Fprintf(os.Stderr, "herald dlq replay: %v\n", err)
			return 1
		}
	case "purge":
		if len(items) == 0 {
			fmt.Fprintln(out, "nothing selected")
			return 0
		}
		if !*yes {
			out.Flush()
			fmt.Fprintf(os.Stderr, "purge %d entries from %s? This cannot be undone. [y/N] ", len(items), keys.Dead)
			answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
			if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
				fmt.Fprintln(os.Stderr, "nothing purged")
				return 1
			}
		}
		n, err := dlq.Purge(ctx, c, keys.Dead, items)
		fmt.Fprintf(out, "purged %d of %d selected entries from %s\n", n, len(items), keys.Dead)
		if err != nil {
			out.Flush()
			fmt.Fprintf(os.Stderr, "herald dlq purge: %v\n", err)
			return 1
		}
	}
	return 0
}

// pickVars returns the variables named keys, in that order, for a command reading only some of a
// service's settings.
func pickVars(all []config.Var, keys ...string) []config.Var {
	out := make([]config.Var, 0, len(keys))
	for _, k := range keys {
		for _, v := range all {
			if v.Key == k {
				out = append(out, v)
			}
		}
	}
	return out
}

func printLine(w io.Writer, it dlq.Item) {
	if it.Err != nil {
		fmt.Fprintf(w, "%5d  (not a Herald dead-letter entry: %v) %.60s\n", it.Index, it.Err, it.Raw)
		return
	}
	e := it.Entry
	status := "-"
	if e.Status != 0 {
		status = strconv.Itoa(e.Status)
	}
	url := string(e.URL)
	if url == "" {
		url = "-"
	}
	fmt.Fprintf(w, "%5d  %s  status %-3s  retries %d  %s  %s\n", it.Index, e.At.UTC().Format(time.RFC3339), status, e.Retries, url, e.Reason)
}

func printDetail(w io.Writer, it dlq.Item) {
	fmt.Fprintf(w, "== entry %d\n", it.Index)
	if it.Err != nil {
		fmt.Fprintf(w, "not a Herald dead-letter entry (%v):\n%s\n\n", it.Err, it.Raw)
		return
	}
	e := it.Entry
	fmt.Fprintf(w, "failed at: %s (%s ago)\ninstance:  %s\nreason:    %s\nstatus:    %d\nretries:   %d\nreceiver:  %s\n",
		e.At.UTC().Format(time.RFC3339), time.Since(e.At).Round(time.Second), e.Instance, e.Reason, e.Status, e.Retries, e.URL)
	m := &engine.Message{}
	m.SetRaw(e.Raw)
	if err := acapy.DecodeOutbound(m); err != nil {
		fmt.Fprintf(w, "entry (does not decode: %v):\n%s\n\n", err, e.Raw)
		return
	}
	fmt.Fprintln(w, "headers:")
	for _, h := range m.Headers {
		fmt.Fprintf(w, "  %s: %s\n", h.Name, h.Value)
	}
	payload := m.Payload
	if json.Valid(payload) {
		var v any
		if json.Unmarshal(payload, &v) == nil {
			if b, err := json.MarshalIndent(v, "  ", "  "); err == nil {
				payload = b
			}
		}
	}
	fmt.Fprintf(w, "payload (%d bytes):\n  %s\n\n", len(m.Payload), payload)
}
