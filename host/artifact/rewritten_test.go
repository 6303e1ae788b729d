package artifact_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// A cached artifact rewritten in place to the same size is hashed again at
// its next Fetch, even when a pin (Acquire, Release: they set the file's
// time for the LRU) came in between: the node never serves bytes that are
// not what their digest says.
func TestFetchRewrittenCachedCopyAfterPin(t *testing.T) {
	content := blob(t, 100_000)
	d := digest(content)
	srv := serveBlob(t, content)
	c := newCache(t, t.TempDir(), 0)
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: d}
	path := fetchOK(t, c, a, content)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(content)
	b[7] ^= 0x01
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := c.Acquire(d); err != nil {
		t.Fatal(err)
	}
	defer c.Release(d)
	got, err := c.Fetch(t.Context(), a, nil)
	if err != nil {
		t.Fatalf("Fetch of a rewritten cached copy: %v", err)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, content) {
		t.Fatal("served a cached copy that is not the artifact")
	}
	if h := srv.hits.Load(); h != 2 {
		t.Errorf("HTTP requests = %d, want 2 (the damaged copy fetched again)", h)
	}
}
