package main

import (
	"net"
	"strings"
	"sync"
	"testing"
)

// An --addr without a port dials the node's port, not gRPC's default 443
// (`--addr myhost` reached myhost:443 and the hint named "myhost" alone); a
// target with a scheme is kept as it is.
func TestDialTargetDefaultPort(t *testing.T) {
	for addr, want := range map[string]string{
		"localhost":               "localhost:50052",
		"10.0.0.7":                "10.0.0.7:50052",
		"[::1]":                   "[::1]:50052",
		"::1":                     "[::1]:50052",
		"node-a.lab":              "node-a.lab:50052",
		"localhost:9000":          "localhost:9000",
		"[::1]:9000":              "[::1]:9000",
		"dns:///node-a.lab:50052": "dns:///node-a.lab:50052",
		"unix:///run/node.sock":   "unix:///run/node.sock",
	} {
		if got, err := dialTarget(addr); err != nil || got != want {
			t.Errorf("dialTarget(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
}

// A URL or an empty --addr is a mistake in the command line (exit 2, with
// what to give instead), not an UNAVAILABLE node whose message spoke of
// "too many colons".
func TestAddrURLIsUsageError(t *testing.T) {
	for _, addr := range []string{"http://localhost:50052", "https://node:50052", ""} {
		code, _, errOut := ctl("--addr", addr, "health")
		if code != 2 || !strings.Contains(errOut, "host:port") {
			t.Errorf("--addr %q: exit %d, stderr %q; want 2 and host:port", addr, code, errOut)
		}
	}
}

// The help needs no node: a wrong --addr (or CYXWIZ_ADDR) does not hide it.
func TestHelpWithBadAddr(t *testing.T) {
	if code, out, errOut := ctl("--addr", "http://node:50052", "infer", "--help"); code != 0 || !strings.Contains(out, "usage: cyxwizctl") {
		t.Errorf("infer --help with a URL as --addr: exit %d, %q %q", code, out, errOut)
	}
}

// An address where something accepts connections and never speaks gRPC
// (or whose packets are dropped) ends in the deadline: the error says which
// address was tried and what to check, as for a refused connection. It was
// "DeadlineExceeded: context deadline exceeded while waiting for
// connections to become ready" and nothing else.
func TestSilentAddrHint(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() { // accepts, keeps and never answers
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	addr := lis.Addr().String()
	code, _, errOut := ctl("--addr", addr, "--timeout", "500ms", "health")
	if code != 1 || !strings.Contains(errOut, "DeadlineExceeded") || !strings.Contains(errOut, "no node answers at "+addr) {
		t.Errorf("silent address: exit %d, stderr %q; want 1, the deadline, the address and what to check", code, errOut)
	}
}
