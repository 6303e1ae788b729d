package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// --addr and --timeout work after the command as well as before it; after
// "--" they are the command's arguments.
func TestGlobalFlagsAfterCommand(t *testing.T) {
	addr, _ := startNode(t)
	t.Setenv("CYXWIZ_ADDR", "127.0.0.1:1") // nothing listens: only --addr can reach the node
	for _, args := range [][]string{
		{"health", "--addr", addr},
		{"health", "--addr=" + addr, "--timeout", "5s"},
		{"health", "-timeout=5s", "-addr", addr},
	} {
		if code, out, errOut := ctl(args...); code != 0 || strings.TrimSpace(out) != "SERVING" {
			t.Errorf("%q: exit %d %q %q", args, code, out, errOut)
		}
	}
	if code, _, errOut := ctl("health", "--timeout", "soon"); code != 2 || !strings.Contains(errOut, "timeout") {
		t.Errorf("bad --timeout after the command: exit %d %q", code, errOut)
	} else if n := strings.Count(errOut, "invalid value"); n != 1 {
		t.Errorf("bad --timeout after the command: the error is printed %d times, want once: %q", n, errOut)
	}
	// After "--", "--addr" is an argument: status looks up a deployment of
	// that id on the node --addr names.
	code, _, errOut := ctl("--addr", addr, "status", "--", "--addr")
	if code != 1 || !strings.Contains(errOut, "NotFound") {
		t.Errorf("status -- --addr: exit %d %q", code, errOut)
	}
}

// info prints the server's name and version, and its extensions only when
// it has some: no trailing space.
func TestInfoLine(t *testing.T) {
	addr, _ := startNode(t)
	code, out, errOut := ctl("--addr", addr, "info")
	if code != 0 || !strings.HasPrefix(out, "cyxwiz-node ") || strings.HasSuffix(out, " \n") || strings.Count(out, "\n") != 1 {
		t.Fatalf("info: exit %d %q %q", code, out, errOut)
	}
}

// Into a pipe or a file, the progress bar writes a line per state or phase
// change, with no carriage returns; on a terminal it rewrites one line.
func TestProgressBarNotTerminal(t *testing.T) {
	fetch := func(done uint64, phase string) *cyxwizpb.DeploymentStatus {
		return &cyxwizpb.DeploymentStatus{State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FETCHING,
			Progress: &cyxwizpb.Progress{Phase: phase, DoneBytes: done, TotalBytes: 100}}
	}
	updates := []*cyxwizpb.DeploymentStatus{
		fetch(10, "fetch model"), fetch(50, "fetch model"), fetch(100, "fetch model"),
		fetch(20, "fetch pre guest"),
		{State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_LOADING, Message: "loading"},
		{State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_LOADING, Message: "loading"},
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var buf bytes.Buffer
	for _, w := range []interface{ Write([]byte) (int, error) }{&buf, f} {
		bar := newProgressBar(w)
		for _, u := range updates {
			bar.update(u)
		}
		bar.done()
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"buffer": buf.String(), "file": string(got)} {
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if strings.Contains(out, "\r") || len(lines) != 3 || !strings.Contains(lines[0], "10%") ||
			!strings.Contains(lines[1], "fetch pre guest") || !strings.HasPrefix(lines[2], "loading") {
			t.Errorf("%s: %q", name, out)
		}
	}

	var term bytes.Buffer
	bar := &progressBar{w: &term, tty: true}
	for _, u := range updates {
		bar.update(u)
	}
	bar.done()
	if strings.Count(term.String(), "\r") != len(updates) || strings.Count(term.String(), "\n") != 1 {
		t.Errorf("terminal: %q", term.String())
	}
}

// A node that cannot be reached (nothing listens there) is exit 1 with what
// to do: gRPC's "connection refused" alone did not say which address was
// tried, nor how to give another.
func TestUnreachableNodeHint(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	code, _, errOut := ctl("--addr", addr, "--timeout", "5s", "health")
	if code != 1 || !strings.Contains(errOut, "no node answers at "+addr) || !strings.Contains(errOut, "--addr or CYXWIZ_ADDR") {
		t.Errorf("unreachable node: exit %d, stderr %q; want 1, the address and how to give another", code, errOut)
	}
}
