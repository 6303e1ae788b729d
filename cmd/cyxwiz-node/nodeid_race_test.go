package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestNodeIDConcurrentFirstStart: two nodes started at once on a fresh
// state_dir (systemd plus a manual start, two containers on one volume).
// Every nodeID call that succeeds must return the id that is kept in
// state_dir/node-id; otherwise the surviving daemon announces an id that the
// next restart replaces.
func TestNodeIDConcurrentFirstStart(t *testing.T) {
	const trials, starters = 200, 4
	var mismatched, failed int
	var example string
	for range trials {
		dir := t.TempDir()
		ids := make([]string, starters)
		errs := make([]error, starters)
		var wg sync.WaitGroup
		for i := range starters {
			wg.Add(1)
			go func() { defer wg.Done(); ids[i], errs[i] = nodeID("", dir) }()
		}
		wg.Wait()
		b, _ := os.ReadFile(filepath.Join(dir, "node-id"))
		kept := strings.TrimSpace(string(b))
		for i := range starters {
			switch {
			case errs[i] != nil:
				failed++
			case ids[i] != kept:
				mismatched++
				if example == "" {
					example = "returned " + ids[i] + ", file holds " + kept
				}
			}
		}
	}
	if mismatched > 0 {
		t.Errorf("%d of %d concurrent first starts got an id that is not the one kept (%s); %d failed outright", mismatched, trials*starters, example, failed)
	}
}
