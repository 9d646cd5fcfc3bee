// Command sink is the load tests' ceiling: a fasthttp server that answers every request 200 with
// an empty body, on the relay's server settings, so that a k6 run against it measures what the
// load generator and the machine allow before any Redis work. Loopback only.
//
//	go run ./loadtest/sink -addr 127.0.0.1:8099
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8099", "listen address (keep it on loopback)")
	flag.Parse()
	srv := &fasthttp.Server{
		Name:                 "herald-sink",
		Handler:              func(ctx *fasthttp.RequestCtx) {},
		NoDefaultContentType: true,
	}
	if err := srv.ListenAndServe(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "sink:", err)
		os.Exit(1)
	}
}
