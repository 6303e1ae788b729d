package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// -h and --help print the usage and flags to stdout and exit 0, for
// cyxwizctl and for each command.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}} {
		if code, out, errOut := ctl(args...); code != 0 || !strings.Contains(out, "commands:") || errOut != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	for name := range commands {
		for _, h := range []string{"--help", "-h"} {
			code, out, errOut := ctl("--addr", "127.0.0.1:1", name, h)
			if code != 0 || !strings.HasPrefix(out, "usage: cyxwizctl ") || !strings.Contains(out, " "+name+" ") || errOut != "" {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q", name, h, code, out, errOut)
			}
		}
	}
	// The flag defaults and the documented encodings are in the help.
	if _, out, _ := ctl("deploy", "--help"); !strings.Contains(out, "-pre-sha256 digest") || !strings.Contains(out, "default onnx, or guest with --format-guest") {
		t.Errorf("deploy --help:\n%s", out)
	}
	if _, out, _ := ctl("infer", "--help"); !strings.Contains(out, `"NaN"`) || !strings.Contains(out, `"b64"`) {
		t.Errorf("infer --help:\n%s", out)
	}
}

// "cyxwizctl help" and "cyxwizctl help CMD" are --help and "CMD --help"
// (they were an unknown command, exit 2); help for an unknown command is
// still one.
func TestHelpCommand(t *testing.T) {
	code, out, errOut := ctl("help")
	if code != 0 || !strings.Contains(out, "commands:") || errOut != "" {
		t.Errorf("help: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	_, want, _ := ctl("stop", "--help")
	if code, out, errOut := ctl("help", "stop"); code != 0 || out != want || errOut != "" {
		t.Errorf("help stop: exit %d, stdout %q, stderr %q; want stop --help's %q", code, out, errOut, want)
	}
	if code, _, errOut := ctl("help", "nope"); code != 2 || !strings.Contains(errOut, `unknown command "nope"`) {
		t.Errorf("help nope: exit %d, stderr %q", code, errOut)
	}
}

// Arguments a command does not take, missing ones, and ids that look like
// flags are usage errors (exit 2) before any call to the node.
func TestUnexpectedArgs(t *testing.T) {
	addr, f := startFakeDeployments(t, ready)
	model := tempFile(t, "m.onnx", "x")
	for _, args := range [][]string{
		{"health", "x"}, {"info", "x"}, {"models", "x"}, {"ls", "x", "--state", "ready"},
		{"status"}, {"status", "a", "b"}, {"stop"}, {"stop", "a", "b", "--drain", "1s"}, {"stop", "-x"},
		{"watch", "-x"}, {"infer"}, {"infer", "m", "n", "--input", "X=x.json"},
		{"deploy", "--id", "d", "--model", model, "stray", "--no-wait"},
	} {
		code, _, errOut := ctl(append([]string{"--addr", addr, "--timeout", "5s"}, args...)...)
		if code != 2 || !strings.Contains(errOut, "cyxwizctl "+args[0]+": ") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
	if n := len(f.assigns) + len(f.stops) + len(f.watches); n > 0 {
		t.Errorf("%d calls reached the node", n)
	}
}

// Flags may come before or after a command's arguments, and -- ends the
// flags (an id starting with '-' goes after it).
func TestInterleavedArgs(t *testing.T) {
	addr, f := startFakeDeployments(t, ready)
	for _, tc := range []struct {
		args  []string
		id    string
		drain time.Duration
	}{
		{[]string{"stop", "d1", "--drain", "1s"}, "d1", time.Second},
		{[]string{"stop", "--drain", "2s", "d2"}, "d2", 2 * time.Second},
		{[]string{"stop", "--drain", "3s", "--", "-d3"}, "-d3", 3 * time.Second},
	} {
		if code, _, errOut := ctl(append([]string{"--addr", addr}, tc.args...)...); code != 0 {
			t.Errorf("%v: exit %d, %q", tc.args, code, errOut)
			continue
		}
		s := <-f.stops
		if s.req.DeploymentId != tc.id || s.req.GetDrainTimeout().AsDuration() != tc.drain {
			t.Errorf("%v: stopped %q draining %v", tc.args, s.req.DeploymentId, s.req.GetDrainTimeout().AsDuration())
		}
	}
}

// "--" as a flag's value is a value, not the end of the flags.
func TestParseInterleavedDashDashValue(t *testing.T) {
	fs := newFlagSet("t")
	out := fs.String("output", "", "")
	asJSON := fs.Bool("json", false, "")
	pos, err := parseInterleaved(fs, []string{"--output", "--", "m", "--json", "--", "-n"})
	if err != nil || *out != "--" || !*asJSON || strings.Join(pos, " ") != "m -n" {
		t.Errorf("got %q, output %q, json %v, %v", pos, *out, *asJSON, err)
	}
}

// `health` prints the node's status and exits 1 unless it is SERVING.
func TestHealthNotServing(t *testing.T) {
	hs := health.NewServer()
	addr := fakeServe(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, hs) })
	if code, out, errOut := ctl("--addr", addr, "health"); code != 0 || out != "SERVING\n" {
		t.Errorf("SERVING: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if code, out, errOut := ctl("--addr", addr, "health"); code != 1 || out != "NOT_SERVING\n" || !strings.Contains(errOut, "NOT_SERVING") {
		t.Errorf("NOT_SERVING: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// An unknown ls --state is a usage error that lists the states it takes
// (it named the bad one only), and every state listed is accepted.
func TestListUnknownStateListsStates(t *testing.T) {
	addr, _ := startNode(t)
	code, _, errOut := ctl("--addr", addr, "ls", "--state", "bogus")
	if code != 2 || !strings.Contains(errOut, `unknown state "bogus" (want `+stateList+")") {
		t.Errorf("ls --state bogus: exit %d, stderr %q; want 2 and the states it takes", code, errOut)
	}
	if code, _, errOut := ctl("--addr", addr, "ls", "--state", stateList); code != 0 {
		t.Errorf("ls --state %s: exit %d, stderr %q", stateList, code, errOut)
	}
}
