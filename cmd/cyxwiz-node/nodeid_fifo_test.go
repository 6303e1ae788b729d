package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A node-id that is not a file but something reading would block on (a
// FIFO) or never finish (a link to /dev/zero) fails start-up saying so:
// the start read it first and hung there, with nothing logged.
func TestNodeIDFIFORefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node-id")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := nodeID("", dir)
		done <- result{id, err}
	}()
	select {
	case r := <-done:
		if r.err == nil || !strings.Contains(r.err.Error(), "not a regular file") {
			t.Fatalf("nodeID with a FIFO at node-id: %q, %v; want an error saying it is not a regular file", r.id, r.err)
		}
	case <-time.After(5 * time.Second):
		// Let the blocked read go: a writer opens the FIFO and closes it.
		if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		<-done
		t.Fatal("nodeID hung reading a FIFO at node-id")
	}
}
