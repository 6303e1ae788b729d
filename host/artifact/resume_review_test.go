package artifact_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// A server that stores its object gzip-encoded (S3 with Content-Encoding:
// gzip): Go decodes the answer to a plain request, not to a range request,
// so a download cut by a restart must start over rather than append
// encoded bytes to the decoded ones on disk (it then failed with
// ErrChecksum, although the same fetch works uninterrupted).
func TestGzipDownloadResumedAfterRestart(t *testing.T) {
	content := blob(t, 256<<10) // random: compresses to about its size
	var stall atomic.Bool
	var ranges atomic.Int64
	srv := encodedServer(t, gzipped(content), "gzip", false, &stall, &ranges)
	a := artifact.Artifact{URI: srv.URL + "/model.bin", SHA256: digest(content)}

	// Uninterrupted, the fetch works: the digest is the decoded content's.
	fetchOK(t, newCache(t, t.TempDir(), 0), a, content)

	// Interrupted by the node stopping (Close keeps the partial), then
	// resumed by the next run.
	path, err := interruptThenResume(t, a, &stall)
	t.Logf("resumed fetch after restart: %v (range requests %d)", err, ranges.Load())
	if err != nil {
		t.Fatalf("a fetch that works uninterrupted fails once resumed after a restart: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
		t.Fatal("cached file differs")
	}
}

// TestSameDigestOtherURIFetchesItsOwn: two specs declare one digest at two
// URIs; the first is a dead mirror (404 after a while). The second Fetch
// joins the first's download, and when that fails it tries its own URI
// instead of failing with the first one's error.
func TestSameDigestOtherURIFetchesItsOwn(t *testing.T) {
	content := blob(t, 64<<10)
	d := digest(content)
	asked := make(chan struct{}, 1)
	release := make(chan struct{})
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case asked <- struct{}{}:
		default:
		}
		<-release
		http.NotFound(w, r)
	}))
	t.Cleanup(dead.Close)
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(content) }))
	t.Cleanup(good.Close)
	c := newCache(t, t.TempDir(), 0)
	first := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), artifact.Artifact{URI: dead.URL + "/m", SHA256: d}, nil)
		first <- err
	}()
	<-asked
	second := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), artifact.Artifact{URI: good.URL + "/m", SHA256: d}, nil)
		second <- err
	}()
	time.Sleep(50 * time.Millisecond) // the second joins the first's download
	close(release)
	if err := <-first; !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("the dead mirror's fetch: %v, want ErrNotFound", err)
	}
	if err := <-second; err != nil {
		t.Errorf("the good URI's fetch failed with the dead mirror's error: %v", err)
	}
}

// gzipped is b gzip-encoded.
func gzipped(b []byte) []byte {
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(b)
	zw.Close()
	return zb.Bytes()
}
