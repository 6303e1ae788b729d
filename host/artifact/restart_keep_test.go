package artifact_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// TestReleaseAfterCloseKeepsFiles: the node stops by closing the cache,
// then unloading its deployments, which release their pins. A model larger
// than the whole budget (fetched with a warning) was evicted by that
// Release, so a graceful restart downloaded it again (a kill did not).
// After Close, Release evicts nothing: the next run finds the file.
func TestReleaseAfterCloseKeepsFiles(t *testing.T) {
	srv := artifacttest.New(t)
	big := srv.Add("/big.onnx", blob(t, 4000))
	dir := t.TempDir()
	c := newCache(t, dir, 1000)
	if err := c.Acquire(big.SHA256); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(t.Context(), big, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(big.SHA256); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sha256", big.SHA256)); err != nil {
		t.Fatalf("after Close and Release: %v, want the file kept for the next run", err)
	}

	c = newCache(t, dir, 1000)
	if err := c.Acquire(big.SHA256); err != nil {
		t.Fatal(err)
	}
	defer c.Release(big.SHA256)
	if _, err := c.Fetch(t.Context(), big, nil); err != nil {
		t.Fatal(err)
	}
	if h := srv.Hits("/big.onnx"); h != 1 {
		t.Errorf("downloaded %d times, want once: the restart found it cached", h)
	}
}
