package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNodeID(t *testing.T) {
	dir := t.TempDir()
	first, err := nodeID("", dir)
	if err != nil || len(first) != 32 {
		t.Fatalf("generated id %q, %v", first, err)
	}
	if again, err := nodeID("", dir); err != nil || again != first {
		t.Fatalf("second start: %q, %v; want %q kept", again, err, first)
	}
	if id, err := nodeID("edge-7", dir); err != nil || id != "edge-7" {
		t.Fatalf("configured id: %q, %v", id, err)
	}
	if _, err := nodeID("bad id\n", dir); err == nil {
		t.Error("an id with spaces was accepted")
	}
	path := filepath.Join(dir, "node-id")
	os.WriteFile(path, []byte{0xff, 0xfe, 0}, 0o644)
	if _, err := nodeID("", dir); err == nil {
		t.Error("a garbage node-id file was accepted")
	}
	os.WriteFile(path, []byte("\n"), 0o644) // empty: a fresh id
	if id, err := nodeID("", dir); err != nil || id == first || len(id) != 32 {
		t.Errorf("after an empty file: %q, %v", id, err)
	}
}
