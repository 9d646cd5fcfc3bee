// Command herald is Herald's single binary: an event and webhook delivery engine that replaces the
// Python services of ACA-Py's redis_events plugin. Run `herald help` for the subcommands.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=..."; the module version otherwise.
var version = ""

type command struct {
	name, summary string
	run           func(args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"deliver", "take ACA-Py outbound messages off Redis and deliver them (HTTP, WebSocket)", runDeliver},
		{"relay", "take DIDComm messages over HTTP and WebSocket and queue them for ACA-Py", runRelay},
		{"events", "take ACA-Py events over HTTP and route them to Redis lists as the redis_events plugin does", runEvents},
		{"waypoint", "serve Server-Sent Events streams that each wait for one event, fed by NATS JetStream", runWaypoint},
		{"callbacks", "deliver Anchor Platform events from Kafka: signed client callbacks and the business server", runCallbacks},
		{"dlq", "list, show, replay or purge the dead-letter list", runDLQ},
		{"demo", "run the deliverer end to end on this machine: local Redis, a producer and a receiver", runDemo},
		{"version", "print the version", runVersion},
		{"help", "show this help", func([]string) int { usage(os.Stdout); return 0 }},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `herald: crash-safe, high-throughput event and webhook delivery.

Usage: herald <command> [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun 'herald <command> --help' for the settings of a command.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	switch name {
	case "-h", "--help", "-help":
		name = "help"
	case "--version", "-version":
		name = "version"
	}
	for _, c := range commands {
		if c.name == name {
			os.Exit(c.run(os.Args[2:]))
		}
	}
	fmt.Fprintf(os.Stderr, "herald: unknown command %q\n\n", name)
	usage(os.Stderr)
	os.Exit(2)
}

func runVersion([]string) int {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	fmt.Println("herald", v)
	return 0
}
