package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// errHelpShown reports that a command printed its help instead of running.
var errHelpShown = errors.New("help shown")

// argsNote is how every command reads its command line.
const argsNote = "Flags and arguments may come in any order; put -- before an argument that starts with '-'."

// newFlagSet returns an empty flag set for the command name.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help goes to the client's output
	fs.Usage = func() {}
	return fs
}

// parseArgs parses the command line of the command fs is named after, with
// flags and arguments in any order, and returns the arguments. -h or --help
// prints the command's help and returns errHelpShown; a wrong flag or number
// of arguments is a usageError.
func parseArgs(c *client, fs *flag.FlagSet, args []string) ([]string, error) {
	cmd := commands[fs.Name()]
	pos, err := parseInterleaved(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printHelp(c.out, fs, cmd)
		return nil, errHelpShown
	case err != nil && cmd.maxArgs != 0 && strings.HasPrefix(err.Error(), "flag provided but not defined"):
		return nil, usagef("%v (put -- before an argument that starts with '-')", err)
	case err != nil:
		return nil, usageError(err.Error())
	case cmd.maxArgs == 0 && len(pos) > 0:
		return nil, usagef("unexpected argument %q: %s takes no arguments", pos[0], fs.Name())
	case cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs:
		return nil, usagef("unexpected argument %q; want: %s %s", pos[cmd.maxArgs], fs.Name(), cmd.synopsis)
	case len(pos) < cmd.minArgs:
		return nil, usagef("want: %s %s", fs.Name(), cmd.synopsis)
	}
	return pos, nil
}

// parseInterleaved parses args with fs, collecting the arguments found
// between the flags. flag.Parse stops at the first argument, or after "--",
// after which everything is an argument.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := args[:len(args)-len(rest)]; endsWithTerminator(fs, used) {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// endsWithTerminator reports whether the flags fs parsed from used ended
// with "--" (and not with "--" as the value of a flag).
func endsWithTerminator(fs *flag.FlagSet, used []string) bool {
	n := len(used)
	return n > 0 && used[n-1] == "--" && (n == 1 || !takesValue(fs, used[n-2]))
}

// takesValue reports whether arg is a flag of fs that takes the next
// argument as its value.
func takesValue(fs *flag.FlagSet, arg string) bool {
	name := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
	if name == arg || strings.Contains(name, "=") {
		return false
	}
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}

// printHelp writes a command's usage, description and flags to w.
func printHelp(w io.Writer, fs *flag.FlagSet, cmd command) {
	fmt.Fprintf(w, "usage: cyxwizctl [--addr host:port] [--timeout 30s] %s %s\n\n%s\n", fs.Name(), cmd.synopsis, cmd.summary)
	if cmd.about != "" {
		fmt.Fprintf(w, "\n%s\n", cmd.about)
	}
	fmt.Fprintf(w, "\n%s\n", argsNote)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(w, "\nflags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// uint32Flag is a flag sent in a uint32 field: a negative value or one
// above 2^32-1 is refused, not wrapped.
type uint32Flag uint32

func uint32Var(fs *flag.FlagSet, name, usage string) *uint32 {
	var v uint32
	fs.Var((*uint32Flag)(&v), name, usage)
	return &v
}

func (u *uint32Flag) String() string { return strconv.FormatUint(uint64(*u), 10) }

func (u *uint32Flag) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("want a whole number from 0 to %d", uint64(math.MaxUint32))
	}
	*u = uint32Flag(n)
	return nil
}

// durationFlag is a duration flag that refuses negative values and, when
// unit is set, non-zero values below the unit of the field they are sent
// in (a queue delay of 500ns would reach the node as 0 µs).
type durationFlag struct {
	d, unit time.Duration
}

func durationVar(fs *flag.FlagSet, name string, value, unit time.Duration, usage string) *time.Duration {
	f := &durationFlag{d: value, unit: unit}
	fs.Var(f, name, usage)
	return &f.d
}

func (f *durationFlag) String() string { return f.d.String() }

func (f *durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return errors.New("want a duration such as 500ms, 10s or 1m30s")
	case d < 0:
		return errors.New("must not be negative")
	case d > 0 && d < f.unit:
		return fmt.Errorf("must be 0 or at least %v", f.unit)
	}
	f.d = d
	return nil
}
