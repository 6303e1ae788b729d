package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A node-id that is a dangling symlink (its target deleted, or on a volume
// not mounted) fails start-up saying so, rather than blaming concurrent
// starts ("keeps changing under this start") or silently replacing it.
func TestNodeIDDanglingSymlink(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node-id")
	if err := os.Symlink(filepath.Join(dir, "gone", "node-id"), path); err != nil {
		t.Fatal(err)
	}
	_, err := nodeID("", dir)
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("nodeID with a dangling node-id symlink: %v, want an error saying it is not a regular file", err)
	}
}

// A start that died between writing its temporary id file and renaming it
// left a .node-id-<random> file; the next start removes stale ones.
func TestNodeIDStaleTempsRemoved(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, ".node-id-123456")
	if err := os.WriteFile(left, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Minute) // a concurrent start's would be young
	if err := os.Chtimes(left, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeID("", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); err == nil {
		t.Errorf("a crashed start's %s is still there after a successful start: they accumulate", filepath.Base(left))
	}
}

// Starts racing on a blank node-id (a truncation, or a write lost to a
// power cut) all return the id that is kept.
func TestNodeIDConcurrentBlankFile(t *testing.T) {
	const trials, starters = 100, 4
	var mismatched int
	var example string
	for range trials {
		dir := t.TempDir()
		path := filepath.Join(dir, "node-id")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		ids := make([]string, starters)
		errs := make([]error, starters)
		start := make(chan struct{})
		done := make(chan int, starters)
		for i := range starters {
			go func() { <-start; ids[i], errs[i] = nodeID("", dir); done <- i }()
		}
		close(start)
		for range starters {
			<-done
		}
		b, _ := os.ReadFile(path)
		kept := strings.TrimSpace(string(b))
		for i := range starters {
			if errs[i] == nil && ids[i] != kept {
				mismatched++
				if example == "" {
					example = "returned " + ids[i] + ", file holds " + kept
				}
			}
		}
	}
	if mismatched > 0 {
		t.Errorf("%d of %d concurrent starts on a blank node-id got an id that is not the one kept (%s)", mismatched, trials*starters, example)
	}
}
