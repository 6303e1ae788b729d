// Command cyxwiz-node is the CyxWiz compute-node daemon.
//
//	cyxwiz-node serve -c node.toml          run in the foreground (Ctrl-C stops)
//	cyxwiz-node check-config -c node.toml   validate a config file
//	cyxwiz-node version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/BurntSushi/toml"

	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/server"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

const usage = `usage: cyxwiz-node <command> [flags]

commands:
  serve         run the node in the foreground (-c node.toml)
  check-config  validate a config file and print the effective values (-c node.toml)
  version       print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "cyxwiz-node %s\n", server.Version)
		return 0
	case "serve", "check-config":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "cyxwiz-node: unknown command %q\n%s", cmd, usage)
		return 2
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and usage are printed below
	path := fs.String("c", "node.toml", "config file")
	printUsage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: cyxwiz-node %s [-c node.toml]\n", cmd)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) { // -h, --help: asked for, not a mistake
			printUsage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "cyxwiz-node %s: %v\n", cmd, err)
		printUsage(stderr)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cyxwiz-node %s: unexpected argument %q (the config file goes after -c)\n%s", cmd, fs.Arg(0), usage)
		return 2
	}
	cfg, err := config.Load(*path)
	var reg *loaders.Registry
	if err == nil {
		reg = newRegistry(cfg)
		err = checkFormats(*path, cfg, reg)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if cmd == "check-config" {
		for _, w := range modelWarnings(cfg, reg) {
			fmt.Fprintln(stderr, "warning:", w)
		}
		fmt.Fprintf(stdout, "# %q: ok. Effective values (defaults filled in, paths resolved, secrets hidden):\n", *path)
		shown := *cfg
		if shown.Central.Token != "" {
			shown.Central.Token = "<set>"
		}
		if err := toml.NewEncoder(stdout).Encode(&shown); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	}

	// A write to a broken stderr (whatever read the log went away) must
	// not kill the node, as Go does unless SIGPIPE is handled: its log lines
	// are lost and it serves on. (Notify, not Ignore: an ignored signal
	// stays ignored in the processes the node starts.)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, level, stderr)
	ctx, stop := signalContext(log, level)
	err = serve(ctx, cfg, log)
	stop() // the stop is over: a late second signal must not turn it into a forced exit
	if err != nil {
		log.Error("node stopped", "err", err)
		return 1
	}
	log.Info("node stopped")
	return 0
}

// signalContext is cancelled by the first SIGINT or SIGTERM, which starts a
// graceful stop; a second one exits at once. After stop, both are ignored
// (not given back their default action, which would kill the process with
// the stop already done: `timeout` sends its signal twice). SIGHUP, which
// operators and their tools (systemctl reload, logrotate) send to have a
// daemon reload, is logged and ignored: node.toml is read once, at start,
// and the log goes to stderr, which has nothing to reopen. By default it
// killed the node at once, without a drain. SIGUSR1 switches debug logging
// on, and off again (back to log.level), for looking at a live node;
// SIGUSR2 is logged and ignored: by default both killed the node too.
func signalContext(log *slog.Logger, level *slog.LevelVar) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	configured := level.Level()
	done := make(chan struct{})
	go func() {
		stopping := false
		for {
			select {
			case s := <-hups:
				switch s {
				case syscall.SIGHUP:
					log.Warn("SIGHUP ignored: node.toml is read only at start; restart the node to apply changes")
				case syscall.SIGUSR1:
					to := slog.LevelDebug
					if level.Level() == slog.LevelDebug {
						to = configured
						if to == slog.LevelDebug { // log.level is debug: the switch is to info
							to = slog.LevelInfo
						}
					}
					level.Set(to)
					// Said at warn, so that it shows whatever the level.
					log.Warn("SIGUSR1: log level changed (send SIGUSR1 again to switch back)", "level", to.String())
				default:
					log.Warn("signal ignored", "signal", s.String())
				}
			case s := <-sigs:
				if stopping {
					log.Warn("second signal: forcing exit", "signal", s.String())
					os.Exit(1)
				}
				stopping = true
				log.Info("signal received: stopping (send again to force)", "signal", s.String())
				cancel()
			case <-done:
				return
			}
		}
	}()
	return ctx, sync.OnceFunc(func() {
		// Still notified, on a channel nobody reads: the signals are dropped.
		close(done)
		cancel()
	})
}

// newLogger makes the node's logger at c.Level, which it sets level to;
// level can change it later (SIGUSR1).
func newLogger(c config.Log, level *slog.LevelVar, w io.Writer) *slog.Logger {
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

var errStartup = errors.New("start-up failed")

// modelWarnings lists the [[models]] that are valid but will not serve on
// this node as it is: a format this build cannot load here, a model file
// that is not there or that this user cannot read. serve starts without
// them (each deployment fails with its reason), so check-config says so
// without failing.
func modelWarnings(cfg *config.Config, reg *loaders.Registry) []string {
	var out []string
	for i, m := range cfg.Models {
		if _, err := reg.Get(m.Format); err != nil && reg.Known(m.Format) {
			out = append(out, fmt.Sprintf("models[%d] (%s): will fail to load here: %v", i, m.Name, err))
		}
		if fi, err := os.Stat(m.Path); err != nil {
			out = append(out, fmt.Sprintf("models[%d] (%s): will fail to load here: %v", i, m.Name, err))
		} else if !fi.Mode().IsRegular() {
			out = append(out, fmt.Sprintf("models[%d] (%s): will fail to load here: %s is not a regular file", i, m.Name, m.Path))
		} else if f, err := os.Open(m.Path); err != nil {
			// One the node's user cannot read (check-config run as that
			// user, as serve is): the load fails with EACCES.
			out = append(out, fmt.Sprintf("models[%d] (%s): will fail to load here: %v", i, m.Name, err))
		} else {
			f.Close()
		}
		if limit := cfg.Limits.MaxDeployments; limit > 0 && i >= limit {
			// serve refuses it at admission: it is listed Failed.
			out = append(out, fmt.Sprintf("models[%d] (%s): will not be served: limits.max_deployments is %d", i, m.Name, limit))
		}
	}
	return out
}

// checkFormats refuses [[models]] whose format no loader of this build
// knows: the config package cannot tell, and such a model was accepted by
// check-config, then only logged as not served.
func checkFormats(path string, cfg *config.Config, reg *loaders.Registry) error {
	var problems []string
	for i, m := range cfg.Models {
		if !reg.Known(m.Format) {
			var known []string
			for _, f := range reg.Formats() {
				known = append(known, f.Format)
			}
			problems = append(problems, fmt.Sprintf("models[%d].format: unknown format %q (known: %s)", i, m.Format, strings.Join(known, ", ")))
		}
	}
	if len(problems) > 0 {
		return &config.Error{File: path, Problems: problems}
	}
	return nil
}
