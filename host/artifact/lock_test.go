package artifact

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// One cache directory, one open Cache: a second (another node given the
// same storage.cache_dir) is refused with a message saying so, since at
// start it would delete the first's partial downloads. Closing the first
// lets the next one open.
func TestCacheDirLocked(t *testing.T) {
	dir := t.TempDir()
	first, err := New(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(dir, tmpDir, strings.Repeat("ab", 32)+partSuffix+".x")
	if err := os.WriteFile(partial, []byte("in progress"), 0o644); err != nil {
		t.Fatal(err)
	}
	if second, err := New(dir, 0, nil); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		if second != nil {
			second.Close()
		}
		t.Fatalf("second cache on one directory: %v, want it refused", err)
	}
	if _, err := os.Stat(partial); err != nil {
		t.Errorf("the refused cache touched the first's files: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := New(dir, 0, nil)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	again.Close()
}
