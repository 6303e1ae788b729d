// Command cyxwizctl talks to a cyxwiz-node over gRPC.
//
//	cyxwizctl [--addr host:port] <command> [args]
//
// The address defaults to $CYXWIZ_ADDR, then localhost:50052.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, c *client, args []string) error
}

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, c *client, args []string) error) {
	commands[name] = command{summary: summary, run: run}
}

// client holds the connection and output of one invocation.
type client struct {
	conn *grpc.ClientConn
	out  io.Writer
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: cyxwizctl [--addr host:port] [--timeout 30s] <command> [args]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cyxwizctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(stderr) }
	def := os.Getenv("CYXWIZ_ADDR")
	if def == "" {
		def = "localhost:50052"
	}
	addr := fs.String("addr", def, "node address (env CYXWIZ_ADDR)")
	timeout := fs.Duration("timeout", 30*time.Second, "deadline for the command (0 = none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		usage(stderr)
		return 2
	}
	name := fs.Arg(0)
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "cyxwizctl: unknown command %q\n", name)
		usage(stderr)
		return 2
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.MaxCallSendMsgSize(256<<20)))
	if err != nil {
		fmt.Fprintf(stderr, "cyxwizctl: %v\n", err)
		return 1
	}
	defer conn.Close()
	ctx := context.Background()
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "timeout" })
	if name == "watch" && !explicit {
		*timeout = 0 // a watch runs until interrupted
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	if err := cmd.run(ctx, &client{conn: conn, out: stdout}, fs.Args()[1:]); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "cyxwizctl %s: %s\n", name, ue)
			return 2
		}
		if s, ok := status.FromError(err); ok {
			fmt.Fprintf(stderr, "cyxwizctl %s: %s: %s\n", name, s.Code(), s.Message())
		} else {
			fmt.Fprintf(stderr, "cyxwizctl %s: %v\n", name, err)
		}
		return 1
	}
	return 0
}

// usageError is a mistake in the command line.
type usageError string

func (u usageError) Error() string { return string(u) }

func usagef(format string, args ...any) error { return usageError(fmt.Sprintf(format, args...)) }

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}
