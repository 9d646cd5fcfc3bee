package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/heraldhq/herald/internal/acapy"
	"github.com/heraldhq/herald/internal/fixture"
	"github.com/heraldhq/herald/internal/redisq"
	"github.com/redis/rueidis"
)

// runDemo shows the deliverer doing its job on this machine: it fills a fresh queue, starts
// `herald deliver` as a separate process with the reference's environment, and counts what a
// local receiver gets, including one malformed entry that must end in the dead-letter list.
func runDemo(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	redisURL := fs.String("redis", envOr("REDIS_SERVER_URL", "redis://127.0.0.1:6379"), "Redis to use (env REDIS_SERVER_URL)")
	n := fs.Int("messages", 50000, "messages to deliver")
	size := fs.Int("size", 300, "payload bytes per message")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: herald demo [flags]\n\nRuns herald deliver end to end against a local Redis with a fresh key prefix, a producer and a local HTTP receiver, and prints what happened.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	log := newLogger("text", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	client, err := redisq.Connect(cctx, *redisURL, log)
	ccancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: cannot reach Redis at %s (run scripts/services.sh redis): %v\n", *redisURL, err)
		return 1
	}
	defer client.Close()

	prefix := "herald_demo_" + redisq.NewInstanceID()[:8]
	keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	defer cleanup(client, prefix)

	recv, err := fixture.NewReceiver(*n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer recv.Close()
	fmt.Printf("1. receiver listening on %s\n", recv.URL())

	start := time.Now()
	entrySize, err := fixture.Fill(ctx, client, keys.Queue, recv.URL()+"/hook", 0, *n, *size)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: filling the queue:", err)
		return 1
	}
	bad := `{"service": {"url": "http://127.0.0.1:1/x"}, "payload": "not base64!"}`
	if err := client.Do(ctx, client.B().Rpush().Key(keys.Queue).Element(bad).Build()).Error(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	fmt.Printf("2. producer pushed %d ACA-Py outbound entries (%d bytes each, %d-byte payloads) and 1 malformed entry onto %s in %s\n",
		*n, entrySize, *size, keys.Queue, time.Since(start).Round(time.Millisecond))

	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	cmd := exec.Command(self, "deliver")
	cmd.Env = append(os.Environ(), "REDIS_SERVER_URL="+*redisURL, "TOPIC_PREFIX="+prefix, "HERALD_LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	fmt.Printf("3. started: REDIS_SERVER_URL=%s TOPIC_PREFIX=%s herald deliver\n", *redisURL, prefix)
	start = time.Now()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	ok := recv.WaitAll(2 * time.Minute)
	took := time.Since(start)
	received, missing, dups := recv.Tally()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()

	dead, _ := client.Do(ctx, client.B().Lrange().Key(keys.Dead).Start(0).Stop(-1).Build()).AsStrSlice()
	fmt.Printf("4. receiver got %d of %d messages (%d missing, %d duplicates) in %s: %.0f msgs/s (startup included)\n",
		received, *n, missing, dups, took.Round(time.Millisecond), float64(received)/took.Seconds())
	fmt.Printf("5. dead-letter list %s holds %d entr%s\n", keys.Dead, len(dead), plural(len(dead)))
	for _, d := range dead {
		if dl, err := acapy.ParseDeadLetter([]byte(d)); err == nil {
			fmt.Printf("   reason: %s\n", dl.Reason)
		}
	}
	fmt.Printf("6. herald deliver stopped with SIGTERM; keys %s_* removed\n", prefix)
	if !ok || len(dead) != 1 {
		fmt.Println("demo: FAILED")
		return 1
	}
	fmt.Println("demo: OK")
	return 0
}

func plural(n int) string {
	if n == 1 {
		return "y"
	}
	return "ies"
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func cleanup(c rueidis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys := redisq.NewKeys(prefix+"_outbound", prefix+"_outbound_retry", "")
	_ = c.Do(ctx, c.B().Del().Key(keys.Queue, keys.Dead).Build()).Error()
	_ = c.Do(ctx, c.B().Del().Key(keys.RetrySet).Build()).Error()
}
