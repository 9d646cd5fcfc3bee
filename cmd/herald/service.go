package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/gctune"
)

// service is one long-running subcommand: its help, its settings and how to run it. Every service
// parses, validates and starts the same way, so that each exits 2 with one line on a bad setting,
// logs alike and drains on the first SIGTERM.
type service[C any] struct {
	name  string
	about string // the help text before the list of variables
	vars  []config.Var
	load  func(config.Env) (C, error)
	log   func(C) (format, level string)
	run   func(context.Context, C, *slog.Logger) error
	// extra adds flags of the service's own; the returned function runs after parsing and may
	// handle the command itself (done).
	extra func(*flag.FlagSet) func(config.Env) (code int, done bool)
}

func runService[C any](s service[C], args []string) int {
	fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	env := envFlags(fs, s.vars)
	var extra func(config.Env) (int, bool)
	if s.extra != nil {
		extra = s.extra(fs)
	}
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, s.about)
		printVars(os.Stderr, s.vars)
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
		fmt.Fprintf(os.Stderr, "herald %s: unexpected argument %q\n", s.name, fs.Arg(0))
		return 2
	}
	if extra != nil {
		if code, done := extra(env); done {
			return code
		}
	}
	cfg, err := s.load(env)
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald %s: invalid configuration: %v\n", s.name, err)
		return 2
	}
	log := newLogger(s.log(cfg))
	gctune.Apply()
	ctx, cancel := signalContext(log)
	defer cancel()
	if err := s.run(ctx, cfg, log); err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			fmt.Fprintf(os.Stderr, "herald %s: invalid configuration: %v\n", s.name, err)
			return 2
		}
		log.Error("herald "+s.name+" failed", "err", err)
		return 1
	}
	return 0
}
