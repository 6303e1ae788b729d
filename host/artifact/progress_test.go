package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// TestProgressMonotonicAcrossRetry: a Fetch that joined another URI's
// download, saw its progress, and then (that download failing) fetches
// from its own URI must not report progress going back to 0: done never
// decreases, as Fetch promises (a progress bar jumped back).
func TestProgressMonotonicAcrossRetry(t *testing.T) {
	const size = 256 << 10
	content := blob(t, size)
	d := digest(content)

	// The mirror sends all but the last byte, without a length, once
	// released: the shared download fails its checksum.
	sent := make(chan struct{}, 1)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write(content[:size-1])
		w.(http.Flusher).Flush()
		select {
		case sent <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(bad.Close)
	t.Cleanup(releaseOnce)
	// The good URI sends half, then waits for the test.
	good := serveGated(t, content, true)

	c := newCache(t, t.TempDir(), 0)
	first := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), artifact.Artifact{URI: bad.URL + "/m", SHA256: d}, nil)
		first <- err
	}()
	receive(t, sent, "the mirror to send its bytes")

	var mu sync.Mutex
	var calls [][2]int64
	joined := make(chan struct{})
	ownTotal := make(chan struct{})
	joinedOnce, ownOnce := sync.OnceFunc(func() { close(joined) }), sync.OnceFunc(func() { close(ownTotal) })
	type result struct {
		path string
		err  error
	}
	second := make(chan result, 1)
	go func() {
		path, err := c.Fetch(context.Background(), artifact.Artifact{URI: good.URL + "/m", SHA256: d}, func(done, total int64) {
			mu.Lock()
			calls = append(calls, [2]int64{done, total})
			mu.Unlock()
			if done > 0 && total == -1 { // the mirror's download, shared
				joinedOnce()
			}
			if total == size { // its own download, from the good URI
				ownOnce()
			}
		})
		second <- result{path, err}
	}()
	receive(t, joined, "the second fetch to join the mirror's download")
	releaseOnce()
	if err := <-first; !errors.Is(err, artifact.ErrChecksum) {
		t.Errorf("the mirror's fetch: %v, want ErrChecksum", err)
	}
	receive(t, ownTotal, "the second fetch to report its own download")
	good.release()
	res := <-second
	if res.err != nil {
		t.Fatalf("the good URI's fetch: %v", res.err)
	}

	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(calls); i++ {
		if calls[i][0] < calls[i-1][0] {
			t.Errorf("progress went backwards: %v then %v (all: %v)", calls[i-1], calls[i], calls)
			break
		}
	}
	if last := calls[len(calls)-1]; last != [2]int64{size, size} {
		t.Errorf("last progress = %v, want (%d, %d)", last, size, size)
	}
}

// TestSharedDownloadOtherLimitsFetchesItsOwn: two specs name one artifact
// at one URI; the first declares a wrong size (too small). The second,
// which declares none, joined the first's download and failed with the
// first's "too large", about a limit it never set. It now fetches as its
// own spec says.
func TestSharedDownloadOtherLimitsFetchesItsOwn(t *testing.T) {
	const size = 256 << 10
	content := blob(t, size)
	srv := serveGated(t, content, false) // no length: the limit cuts the body
	c := newCache(t, t.TempDir(), 0)
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}

	wrong := a
	wrong.Size = size * 3 / 4 // more than the half sent before the gate
	started := make(chan struct{}, 1)
	first := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), wrong, signalOnce(started))
		first <- err
	}()
	receive(t, started, "the first fetch to start")
	joined := make(chan struct{}, 1)
	second := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), a, signalOnce(joined))
		second <- err
	}()
	receive(t, joined, "the second fetch to join the download")
	srv.release()
	if err := <-first; !errors.Is(err, artifact.ErrTooLarge) {
		t.Errorf("the wrong size's fetch: %v, want ErrTooLarge", err)
	}
	if err := <-second; err != nil {
		t.Errorf("the fetch without a size failed with the other spec's limit: %v", err)
	}
}

// TestSharedDownloadDoneNotRetried: a shared download that worked is not
// fetched again for a caller (another URI) whose own limits refuse it: the
// node logged that the shared download had failed, and went to the cache
// again (or the network, had it been evicted). The caller gets its error
// at once, from the one request.
func TestSharedDownloadDoneNotRetried(t *testing.T) {
	content := blob(t, 128<<10)
	srv := serveGated(t, content, true)
	var logs syncBuffer
	c, err := artifact.New(t.TempDir(), 0, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}
	started := make(chan struct{}, 1)
	first := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), a, signalOnce(started))
		first <- err
	}()
	receive(t, started, "the first fetch to start")
	small := a
	small.URI, small.MaxSize = srv.URL+"/mirror", 1<<10
	joined := make(chan struct{}, 1)
	second := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), small, signalOnce(joined))
		second <- err
	}()
	receive(t, joined, "the second fetch to join the download")
	srv.release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; !errors.Is(err, artifact.ErrTooLarge) {
		t.Errorf("second fetch: %v, want ErrTooLarge", err)
	}
	if h := srv.hits.Load(); h != 1 {
		t.Errorf("HTTP requests = %d, want 1", h)
	}
	if out := logs.String(); strings.Contains(out, "failed") {
		t.Errorf("a download that worked is logged as failed:\n%s", out)
	}
}

// syncBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
