package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/deliver"
)

// envFlags registers one flag per variable (HERALD_CONCURRENCY -> --concurrency,
// REDIS_SERVER_URL -> --redis-server-url) and returns an Env where flags win over the environment.
func envFlags(fs *flag.FlagSet, vars []config.Var) config.Env {
	set := map[string]*string{}
	for _, v := range vars {
		name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(v.Key, "HERALD_"), "_", "-"))
		set[v.Key] = fs.String(name, "", fmt.Sprintf("%s (env %s, default %s)", v.Help, v.Key, orNone(v.Default)))
	}
	return func(key string) (string, bool) {
		if p, ok := set[key]; ok && *p != "" {
			return *p, true
		}
		return os.LookupEnv(key)
	}
}

func orNone(s string) string {
	if s == "" {
		return "unset"
	}
	return s
}

func printVars(w io.Writer, vars []config.Var) {
	fmt.Fprintln(w, "\nEnvironment (flags of the same name, lower-case without HERALD_, win):")
	for _, v := range vars {
		fmt.Fprintf(w, "  %-24s %-26s %s\n", v.Key, orNone(v.Default), v.Help)
	}
}

func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// signalContext is cancelled by the first SIGTERM or SIGINT; a second one exits at once.
func signalContext(log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-ch
		log.Info("signal received; draining (send it again to exit at once)", "signal", s.String())
		cancel()
		<-ch
		log.Warn("second signal; exiting without draining: in-flight messages return when the lease expires")
		os.Exit(1)
	}()
	return ctx, cancel
}

func runDeliver(args []string) int {
	return runService(service[config.Deliver]{
		name: "deliver",
		about: `Usage: herald deliver [flags]

Takes ACA-Py outbound messages off the Redis list <prefix>_outbound and delivers them: http(s) as a
POST of the decoded payload with the entry's headers, ws(s) as one binary frame. Failures are retried
on the reference schedule through <prefix>_outbound_retry; after 5 retries, or when an entry cannot
be decoded, the entry goes to the dead-letter list with the reason. Started with the same
environment as the Python deliverer, it replaces it.

--source (HERALD_SOURCE) takes the same entries from NATS JetStream, Kafka or RabbitMQ instead,
with retries and dead letters kept the broker's way (README: Brokers):
  herald deliver --source nats://127.0.0.1:4222          stream and subject <prefix>_outbound
  herald deliver --source kafka://k1:9092,k2:9092        topic <prefix>_outbound, group herald-deliver
  herald deliver --source amqp://guest:guest@host:5672/  queue <prefix>_outbound
`,
		vars: config.DeliverVars,
		load: config.LoadDeliver,
		log:  func(c config.Deliver) (string, string) { return c.LogFormat, c.LogLevel },
		run:  deliver.Run,
	}, args)
}
