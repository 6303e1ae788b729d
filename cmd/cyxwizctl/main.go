// Command cyxwizctl talks to a cyxwiz-node over gRPC.
//
//	cyxwizctl [--addr host:port] [--timeout 30s] <command> [args]
//
// The address defaults to $CYXWIZ_ADDR, then localhost:50052. Each
// command's flags and arguments may come in any order; `cyxwizctl
// <command> --help` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// defaultTimeout is --timeout when the command line does not give it.
const defaultTimeout = 30 * time.Second

// command is one subcommand.
type command struct {
	synopsis string // its arguments and flags, as in "ID [--drain 10s]"
	summary  string // one line for the command list
	about    string // more for --help; may be empty
	// minArgs and maxArgs bound the number of arguments (maxArgs < 0: any).
	minArgs, maxArgs int
	// ownDeadline commands apply --timeout themselves (client.deadline),
	// because they run longer than the default: run gives them a context
	// without a deadline.
	ownDeadline bool
	run         func(ctx context.Context, c *client, args []string) error
}

var commands = map[string]command{}

func register(name string, cmd command) { commands[name] = cmd }

// client holds the connection, output and deadline of one invocation.
type client struct {
	conn            *grpc.ClientConn
	out             io.Writer
	timeout         time.Duration // --timeout; 0 is none
	explicitTimeout bool          // --timeout was given on the command line
}

// deadline bounds ctx by --timeout. When --timeout was not given, the
// default is extended to need: a command known to take longer (a stop that
// drains) is not cut short by a deadline nobody asked for.
func (c *client) deadline(ctx context.Context, need time.Duration) (context.Context, context.CancelFunc) {
	d := c.timeout
	if !c.explicitTimeout && d > 0 && need > d {
		d = need
	}
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// explicitDeadline bounds ctx by --timeout only when the command line gave
// it: for what runs until done by default (watch, deploy's wait).
func (c *client) explicitDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if !c.explicitTimeout {
		return context.WithCancel(ctx)
	}
	return c.deadline(ctx, 0)
}

func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "usage: cyxwizctl [--addr host:port] [--timeout 30s] <command> [args]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'cyxwizctl <command> --help' (or 'cyxwizctl help <command>') for a command's arguments and flags.\n\nflags:")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs one command line and returns the exit status: 0 on success, 1
// when the command fails, 2 for a mistake in the command line.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cyxwizctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, to stdout for --help
	def := os.Getenv("CYXWIZ_ADDR")
	if def == "" {
		def = "localhost:50052"
	}
	addr := fs.String("addr", def, "node `address`: host:port, or a host, on port "+defaultPort+" (env CYXWIZ_ADDR)")
	timeout := durationVar(fs, "timeout", defaultTimeout, 0,
		"`deadline` of the command (0 = none; watch and deploy's wait for readiness have none unless it is given)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, fs)
			return 0
		}
		usage(stderr, fs)
		return 2
	}
	if fs.NArg() == 0 {
		usage(stderr, fs)
		return 2
	}
	name := fs.Arg(0)
	if name == "help" { // "help" and "help CMD", as "--help" and "CMD --help"
		if fs.NArg() == 1 {
			usage(stdout, fs)
			return 0
		}
		if _, ok := commands[fs.Arg(1)]; ok {
			return run([]string{fs.Arg(1), "--help"}, stdout, stderr)
		}
		name = fs.Arg(1)
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "cyxwizctl: unknown command %q\n", name)
		usage(stderr, fs)
		return 2
	}
	// --addr and --timeout may follow the command too.
	global, cmdArgs := hoistGlobal(fs, fs.Args()[1:])
	fs.SetOutput(io.Discard) // the error is printed once, below
	if err := fs.Parse(global); err != nil {
		fmt.Fprintf(stderr, "cyxwizctl %s: %v\n", name, err)
		return 2
	}
	target, err := dialTarget(*addr)
	if err != nil {
		if !asksHelp(cmdArgs) {
			return exitStatus(err, name, stderr)
		}
		target = "passthrough:///" // the help needs no node
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.MaxCallSendMsgSize(256<<20)))
	if err != nil {
		fmt.Fprintf(stderr, "cyxwizctl: %v\n", err)
		return 1
	}
	defer conn.Close()
	out := &outWriter{w: stdout}
	c := &client{conn: conn, out: out, timeout: *timeout}
	fs.Visit(func(f *flag.Flag) { c.explicitTimeout = c.explicitTimeout || f.Name == "timeout" })
	ctx := context.Background()
	if !cmd.ownDeadline {
		var cancel context.CancelFunc
		ctx, cancel = c.deadline(ctx, 0)
		defer cancel()
	}
	err = cmd.run(ctx, c, cmdArgs)
	if out.err != nil && (err == nil || errors.Is(err, errHelpShown)) {
		err = fmt.Errorf("write output: %w", out.err)
	}
	return exitStatus(withAddrHint(err, target), name, stderr)
}

// outWriter is a command's output that remembers the first error writing
// it: output lost to a full disk is a failure, not exit status 0.
type outWriter struct {
	w   io.Writer
	err error
}

func (o *outWriter) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.w.Write(p)
	o.err = err
	return n, err
}

// defaultPort is the node's gRPC port, which an address without one gets.
const defaultPort = "50052"

// dialTarget is the gRPC target for --addr. A host without a port gets the
// node's port (gRPC would dial 443, and the hint for an unreachable node
// named the host alone); a URL is a usage error (gRPC read it as a host
// with too many colons). A target with a scheme (dns:///h:p, unix:///path)
// is kept.
func dialTarget(addr string) (string, error) {
	switch {
	case addr == "":
		return "", usagef("--addr is empty: want host:port")
	case strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://"):
		return "", usagef("--addr %q: want host:port, not a URL (the node speaks gRPC, e.g. localhost:%s)", addr, defaultPort)
	case strings.Contains(addr, "/"):
		return addr, nil
	case net.ParseIP(addr) != nil: // a bare IPv6 address: ::1
		return net.JoinHostPort(addr, defaultPort), nil
	}
	var ae *net.AddrError
	if _, _, err := net.SplitHostPort(addr); errors.As(err, &ae) && strings.HasPrefix(ae.Err, "missing port") {
		return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), defaultPort), nil
	}
	return addr, nil
}

// asksHelp reports whether a command's arguments ask for its help.
func asksHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// withAddrHint adds to an error from a node that could not be reached what
// to check: whether the node runs there, and how to name another address.
// That is a refused connection, a host that does not resolve, or a
// deadline that ran out before any connection was made (an address whose
// packets are dropped, or where something else accepts and never answers).
func withAddrHint(err error, addr string) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := s.Message()
	if s.Code() == codes.Unavailable && (strings.HasPrefix(msg, "connection error") || strings.HasPrefix(msg, "name resolver error")) ||
		s.Code() == codes.DeadlineExceeded && strings.HasSuffix(msg, "while waiting for connections to become ready") {
		return status.Errorf(s.Code(), "%s\nno node answers at %s: is cyxwiz-node serving there? Give another address with --addr or CYXWIZ_ADDR.", msg, addr)
	}
	return err
}

// hoistGlobal takes the flags of fs (--addr, --timeout), with their values,
// out of a command's arguments, up to a "--" that ends the flags. No
// command has a flag of the same name.
func hoistGlobal(fs *flag.FlagSet, args []string) (global, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return global, append(rest, args[i:]...)
		}
		name, _, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !strings.HasPrefix(a, "-") || name == "" || fs.Lookup(name) == nil {
			rest = append(rest, a)
			continue
		}
		global = append(global, a)
		if !hasValue && i+1 < len(args) {
			i++
			global = append(global, args[i])
		}
	}
	return global, rest
}

// exitStatus reports err on stderr and returns the exit status for it.
func exitStatus(err error, name string, stderr io.Writer) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, errHelpShown):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "cyxwizctl %s: %s\nRun 'cyxwizctl %s --help' for usage.\n", name, ue, name)
		return 2
	}
	if s, ok := status.FromError(err); ok {
		// The node's message may quote a guest or a client: its lines
		// stay, its escape sequences do not reach the terminal.
		fmt.Fprintf(stderr, "cyxwizctl %s: %s: %s\n", name, s.Code(), printableLines(s.Message()))
	} else {
		// An error of this side may quote the node too (an output's
		// name or datatype).
		fmt.Fprintf(stderr, "cyxwizctl %s: %s\n", name, printableLines(err.Error()))
	}
	return 1
}

// usageError is a mistake in the command line.
type usageError string

func (u usageError) Error() string { return string(u) }

func usagef(format string, args ...any) error { return usageError(fmt.Sprintf(format, args...)) }
