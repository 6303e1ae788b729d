package artifact_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// --- helpers ---------------------------------------------------------------

func newCache(t *testing.T, dir string, budget int64, opts ...artifact.Option) *artifact.Cache {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := artifact.New(dir, budget, log, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func blob(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// names lists the entries of dir/sub.
func names(t *testing.T, dir, sub string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// assertClean fails if anything was left in the cache directory.
func assertClean(t *testing.T, dir string) {
	t.Helper()
	for _, sub := range []string{"sha256", "tmp"} {
		if n := names(t, dir, sub); len(n) != 0 {
			t.Errorf("%s/ not empty: %v", sub, n)
		}
	}
}

// blobServer serves fixed content at every path and counts requests.
type blobServer struct {
	*httptest.Server
	hits atomic.Int64
}

func serveBlob(t *testing.T, content []byte) *blobServer {
	t.Helper()
	s := &blobServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.Write(content)
	}))
	t.Cleanup(s.Close)
	return s
}

// gatedServer sends headers and the first half of content, then waits for
// proceed to be closed (or the client to go away) before sending the rest.
type gatedServer struct {
	*httptest.Server
	hits      atomic.Int64
	proceed   chan struct{}
	release   func()        // closes proceed; safe to call more than once
	cancelled chan struct{} // receives when a request's client went away
}

func serveGated(t *testing.T, content []byte, withLength bool) *gatedServer {
	t.Helper()
	s := &gatedServer{proceed: make(chan struct{}), cancelled: make(chan struct{}, 8)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if withLength {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		}
		w.WriteHeader(http.StatusOK)
		half := len(content) / 2
		w.Write(content[:half])
		w.(http.Flusher).Flush()
		select {
		case <-s.proceed:
			w.Write(content[half:])
		case <-r.Context().Done():
			s.cancelled <- struct{}{}
		}
	}))
	s.release = sync.OnceFunc(func() { close(s.proceed) })
	t.Cleanup(s.Close)
	t.Cleanup(s.release) // runs before s.Close, which waits for handlers
	return s
}

// signalOnce returns a progress callback that sends on ch at its first call.
func signalOnce(ch chan<- struct{}) func(done, total int64) {
	var once sync.Once
	return func(done, total int64) { once.Do(func() { ch <- struct{}{} }) }
}

func receive(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// --- tests -----------------------------------------------------------------

func TestFetchHitMiss(t *testing.T) {
	content := blob(t, 100<<10)
	srv := serveBlob(t, content)
	dir := t.TempDir()
	c := newCache(t, dir, 0)
	a := artifact.Artifact{URI: srv.URL + "/model.onnx?sig=secret", SHA256: digest(content)}
	ctx := t.Context()

	path, err := c.Fetch(ctx, a, nil)
	if err != nil {
		t.Fatalf("miss: %v", err)
	}
	if want := filepath.Join(dir, "sha256", digest(content)); path != want {
		t.Errorf("path = %s, want %s", path, want)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
		t.Error("cached content differs")
	}

	var calls [][2]int64
	a.SHA256 = strings.ToUpper(a.SHA256)
	path2, err := c.Fetch(ctx, a, func(d, n int64) { calls = append(calls, [2]int64{d, n}) })
	if err != nil || path2 != path {
		t.Fatalf("hit: path %s, err %v", path2, err)
	}
	if n := int64(len(content)); len(calls) != 1 || calls[0] != [2]int64{n, n} {
		t.Errorf("hit progress = %v, want one call (%d, %d)", calls, n, n)
	}
	if h := srv.hits.Load(); h != 1 {
		t.Errorf("HTTP requests = %d, want 1", h)
	}
	if b, f := c.Usage(); b != int64(len(content)) || f != 1 {
		t.Errorf("Usage = %d, %d", b, f)
	}

	// A cached file removed behind the cache's back is fetched again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctx, a, nil); err != nil {
		t.Fatalf("refetch: %v", err)
	}
	if h := srv.hits.Load(); h != 2 {
		t.Errorf("HTTP requests = %d, want 2", h)
	}
}

func TestFetchHTTPS(t *testing.T) {
	content := blob(t, 1000)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(content) }))
	t.Cleanup(srv.Close)
	c := newCache(t, t.TempDir(), 0, artifact.WithHTTPClient(srv.Client()))
	if _, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestFetchHTTPErrors(t *testing.T) {
	content := blob(t, 5000)
	other := digest([]byte("something else"))
	tests := []struct {
		name    string
		handler http.HandlerFunc
		a       artifact.Artifact // URI is filled in
		want    error
		msg     []string // substrings the error must contain
	}{
		{
			name:    "checksum mismatch",
			handler: func(w http.ResponseWriter, r *http.Request) { w.Write(content) },
			a:       artifact.Artifact{SHA256: other},
			want:    artifact.ErrChecksum,
			msg:     []string{other, digest(content)},
		},
		{
			name:    "not found",
			handler: http.NotFound,
			a:       artifact.Artifact{SHA256: digest(content)},
			want:    artifact.ErrNotFound,
		},
		{
			name:    "server error",
			handler: func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) },
			a:       artifact.Artifact{SHA256: digest(content)},
			want:    artifact.ErrFetch,
			msg:     []string{"500"},
		},
		{
			name: "truncated body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				w.Write(content[:100])
			},
			a:    artifact.Artifact{SHA256: digest(content)},
			want: artifact.ErrFetch,
		},
		{
			name: "too large by content length",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				w.Write(content)
			},
			a:    artifact.Artifact{SHA256: digest(content), MaxSize: 1000},
			want: artifact.ErrTooLarge,
		},
		{
			name: "too large streamed without length",
			handler: func(w http.ResponseWriter, r *http.Request) {
				for i := 0; i < len(content); i += 500 {
					if _, err := w.Write(content[i : i+500]); err != nil {
						return
					}
					w.(http.Flusher).Flush()
				}
			},
			a:    artifact.Artifact{SHA256: digest(content), MaxSize: 1000},
			want: artifact.ErrTooLarge,
		},
		{
			name:    "larger than declared size",
			handler: func(w http.ResponseWriter, r *http.Request) { w.Write(content) },
			a:       artifact.Artifact{SHA256: digest(content), Size: 1000},
			want:    artifact.ErrTooLarge,
		},
		{
			name:    "shorter than declared size",
			handler: func(w http.ResponseWriter, r *http.Request) { w.Write(content) },
			a:       artifact.Artifact{SHA256: digest(content), Size: int64(len(content)) + 1},
			want:    artifact.ErrChecksum,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			dir := t.TempDir()
			c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
			tt.a.URI = srv.URL + "/model"
			_, err := c.Fetch(t.Context(), tt.a, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			for _, m := range append(tt.msg, srv.URL) {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			assertClean(t, dir)
			if b, f := c.Usage(); b != 0 || f != 0 {
				t.Errorf("Usage = %d, %d after failure", b, f)
			}
		})
	}
}

// A request that fails on the way (the server restarting: 503, 502, a
// dropped connection; or 429) is asked again after a backoff: one such
// answer failed the deployment. A refusal (404, 403) is not asked again.
func TestFetchRetriesTransientFailures(t *testing.T) {
	content := blob(t, 5000)
	for _, tc := range []struct {
		name     string
		failures []func(w http.ResponseWriter)
		want     error
		requests int64
	}{
		{"503 then 502 then 429", []func(w http.ResponseWriter){
			func(w http.ResponseWriter) { http.Error(w, "starting", http.StatusServiceUnavailable) },
			func(w http.ResponseWriter) { http.Error(w, "proxy", http.StatusBadGateway) },
			func(w http.ResponseWriter) { http.Error(w, "slow down", http.StatusTooManyRequests) },
		}, nil, 4},
		{"dropped connection", []func(w http.ResponseWriter){
			func(w http.ResponseWriter) {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close()
				}
			},
		}, nil, 2},
		{"404", []func(w http.ResponseWriter){func(w http.ResponseWriter) { http.NotFound(w, nil) }}, artifact.ErrNotFound, 1},
		{"403", []func(w http.ResponseWriter){func(w http.ResponseWriter) { http.Error(w, "no", http.StatusForbidden) }}, artifact.ErrFetch, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n := requests.Add(1); int(n) <= len(tc.failures) {
					tc.failures[n-1](w)
					return
				}
				w.Write(content)
			}))
			t.Cleanup(srv.Close)
			c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(time.Millisecond))
			_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if got := requests.Load(); got != tc.requests {
				t.Fatalf("%d requests, want %d", got, tc.requests)
			}
		})
	}
}

// A fetch whose time runs out while it retries says what it was retrying.
func TestFetchDeadlineWhileRetryingSaysWhy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = c.Fetch(ctx, artifact.Artifact{URI: "http://" + addr + "/m", SHA256: digest(nil)}, nil)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v, want the deadline and the refused connection", err)
	}
}

func TestFetchConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
	_, err = c.Fetch(t.Context(), artifact.Artifact{URI: "http://" + addr + "/m", SHA256: digest(nil)}, nil)
	if !errors.Is(err, artifact.ErrFetch) {
		t.Fatalf("err = %v, want ErrFetch", err)
	}
	assertClean(t, dir)
}

func TestFetchDeadline(t *testing.T) {
	content := blob(t, 256<<10)
	srv := serveGated(t, content, true)
	dir := t.TempDir()
	c := newCache(t, dir, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()

	_, err := c.Fetch(ctx, artifact.Artifact{URI: srv.URL + "/slow", SHA256: digest(content)}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	assertClean(t, dir) // the partial file is gone by the time Fetch returns
	receive(t, srv.cancelled, "the server to see the download cancelled")
}

func TestFetchProgress(t *testing.T) {
	const size = 1 << 20
	content := blob(t, size)
	tests := []struct {
		name       string
		withLength bool
		wantTotal  int64 // total reported before the final call
	}{
		{"content length", true, size},
		{"unknown length", false, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serveGated(t, content, tt.withLength)
			c := newCache(t, t.TempDir(), 0)
			var calls [][2]int64
			start := time.Now()
			// The server sends the second half only after the first
			// progress call: a fast local download cannot collapse into
			// the final call alone.
			_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)},
				func(d, n int64) {
					calls = append(calls, [2]int64{d, n})
					srv.release()
				})
			if err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			if len(calls) < 2 {
				t.Fatalf("progress calls = %v, want several", calls)
			}
			if last := calls[len(calls)-1]; last != [2]int64{size, size} {
				t.Errorf("last progress = %v, want (%d, %d)", last, size, size)
			}
			for i, cl := range calls[:len(calls)-1] {
				if cl[1] != tt.wantTotal {
					t.Errorf("call %d total = %d, want %d", i, cl[1], tt.wantTotal)
				}
				if i > 0 && cl[0] < calls[i-1][0] {
					t.Errorf("progress went backwards: %v then %v", calls[i-1], cl)
				}
			}
			// At most one call per 64 KiB, per 100 ms, plus the first and last.
			if max := size/(64<<10) + int(elapsed/(100*time.Millisecond)) + 3; len(calls) > max {
				t.Errorf("%d progress calls, want at most %d", len(calls), max)
			}
		})
	}
}

func TestFetchConcurrentSameDigest(t *testing.T) {
	const n = 5
	content := blob(t, 128<<10)
	srv := serveGated(t, content, true)
	c := newCache(t, t.TempDir(), 0)
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}

	joined := make(chan struct{}, n)
	paths := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { paths[i], errs[i] = c.Fetch(t.Context(), a, signalOnce(joined)) })
	}
	for range n {
		receive(t, joined, "fetchers to join the download")
	}
	srv.release()
	wg.Wait()
	for i := range n {
		if errs[i] != nil || paths[i] != paths[0] {
			t.Errorf("fetch %d: path %s, err %v", i, paths[i], errs[i])
		}
	}
	if h := srv.hits.Load(); h != 1 {
		t.Errorf("HTTP requests = %d, want 1", h)
	}
}

func TestFetchWaiterCancelKeepsSharedDownload(t *testing.T) {
	content := blob(t, 128<<10)
	srv := serveGated(t, content, true)
	dir := t.TempDir()
	c := newCache(t, dir, 0)
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}

	joined := make(chan struct{}, 2)
	ctxA, cancelA := context.WithCancel(t.Context())
	errA := make(chan error, 1)
	go func() { _, err := c.Fetch(ctxA, a, signalOnce(joined)); errA <- err }()
	errB := make(chan error, 1)
	go func() { _, err := c.Fetch(t.Context(), a, signalOnce(joined)); errB <- err }()
	receive(t, joined, "first fetcher")
	receive(t, joined, "second fetcher")

	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled fetcher: err = %v, want Canceled", err)
	}
	srv.release()
	if err := <-errB; err != nil {
		t.Fatalf("remaining fetcher: %v", err)
	}
	if h := srv.hits.Load(); h != 1 {
		t.Errorf("HTTP requests = %d, want 1", h)
	}
	if got := names(t, dir, "sha256"); len(got) != 1 {
		t.Errorf("sha256/ = %v, want the artifact", got)
	}
}

func TestCloseCancelsDownloads(t *testing.T) {
	content := blob(t, 128<<10)
	srv := serveGated(t, content, true)
	dir := t.TempDir()
	c := newCache(t, dir, 0)
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}

	joined := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() { _, err := c.Fetch(t.Context(), a, signalOnce(joined)); errc <- err }()
	receive(t, joined, "fetcher")
	c.Close()
	if err := <-errc; !errors.Is(err, artifact.ErrClosed) {
		t.Fatalf("in-flight fetch: err = %v, want ErrClosed", err)
	}
	if _, err := c.Fetch(t.Context(), a, nil); !errors.Is(err, artifact.ErrClosed) {
		t.Fatalf("fetch after Close: err = %v, want ErrClosed", err)
	}
	// The partial download stays for the next run (a node that stops and
	// starts again), which resumes it.
	part := filepath.Join(dir, "tmp", digest(content)+".part")
	fi, err := os.Stat(part)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("partial download after Close: %v, %v", fi, err)
	}
	ranged := serveFlaky(t, content)
	c2 := newCache(t, dir, 0)
	fetchOK(t, c2, artifact.Artifact{URI: ranged.URL + "/m", SHA256: digest(content)}, content)
	if want := []string{fmt.Sprintf("bytes=%d-", fi.Size())}; !slices.Equal(ranged.ranges, want) {
		t.Errorf("Range headers %q, want %q", ranged.ranges, want)
	}
}

// TestCloseEndsIdleConnections: the keep-alive connection a download leaves
// in the cache's own HTTP client is closed by Close; its goroutines used to
// run on until the server hung up or the idle timeout (90 s) passed.
func TestCloseEndsIdleConnections(t *testing.T) {
	content := blob(t, 4<<10)
	srv := serveBlob(t, content) // still up when the goroutines are checked
	ignore := goleak.IgnoreCurrent()
	c, err := artifact.New(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, content)
	c.Close()
	goleak.VerifyNone(t, ignore)
}

// TestRefetchWhileCancelledDownloadStops: a Fetch that comes while the
// download its digest had is still stopping (its last waiter left) waits for
// it instead of sharing its partial file, which the stopping one removes.
func TestRefetchWhileCancelledDownloadStops(t *testing.T) {
	srv := artifacttest.New(t)
	content := blob(t, 64<<10)
	a := srv.Add("/m", content)
	srv.Stall("/m")
	c := newCache(t, t.TempDir(), 0)

	// The first download, stopping, waits before removing its partial file
	// for the second Fetch to reach the server (at most 300 ms).
	stopping := make(chan struct{}, 1)
	restore := artifact.SetHookBeforeRemovePartial(func() {
		stopping <- struct{}{}
		deadline := time.Now().Add(300 * time.Millisecond)
		for srv.Total.Load() < 2 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	})
	defer restore()
	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan error, 1)
	go func() { _, err := c.Fetch(ctx, a, nil); first <- err }()
	select {
	case <-srv.Stalled:
	case <-time.After(5 * time.Second):
		t.Fatal("first download did not start")
	}
	srv.Unstall("/m") // the second request is served whole, 50 ms late
	srv.Delay = 50 * time.Millisecond
	cancel()
	receive(t, stopping, "the first download to stop")
	fetchOK(t, c, a, content)
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first fetch: %v, want context.Canceled", err)
	}
}

// writeBlobs writes each content to a file and returns file:// artifacts.
func writeBlobs(t *testing.T, contents ...[]byte) []artifact.Artifact {
	t.Helper()
	src := t.TempDir()
	var out []artifact.Artifact
	for i, b := range contents {
		p := filepath.Join(src, strconv.Itoa(i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, artifact.Artifact{URI: "file://" + p, SHA256: digest(b)})
	}
	return out
}

// cached reports which of as are in the cache directory.
func cached(dir string, as ...artifact.Artifact) []bool {
	var out []bool
	for _, a := range as {
		_, err := os.Stat(filepath.Join(dir, "sha256", a.SHA256))
		out = append(out, err == nil)
	}
	return out
}

func TestEvictionRespectsReferencesAndLRU(t *testing.T) {
	as := writeBlobs(t, blob(t, 100), blob(t, 100), blob(t, 100), blob(t, 100))
	a, b, cc, d := as[0], as[1], as[2], as[3]
	dir := t.TempDir()
	c := newCache(t, dir, 250)
	ctx := t.Context()
	fetch := func(x artifact.Artifact) {
		t.Helper()
		if _, err := c.Fetch(ctx, x, nil); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name string
		do   func()
		want []bool // a, b, c, d cached
	}{
		{"fetch a, b", func() { fetch(a); fetch(b) }, []bool{true, true, false, false}},
		{"acquire a, fetch c: evicts b (a is older but in use)", func() {
			if err := c.Acquire(a.SHA256); err != nil {
				t.Fatal(err)
			}
			fetch(cc)
		}, []bool{true, false, true, false}},
		{"release a: within budget, nothing evicted", func() {
			if err := c.Release(a.SHA256); err != nil {
				t.Fatal(err)
			}
		}, []bool{true, false, true, false}},
		{"fetch d: evicts c, used before a was released", func() { fetch(d) }, []bool{true, false, false, true}},
	}
	for _, s := range steps {
		s.do()
		if got := cached(dir, a, b, cc, d); !slices.Equal(got, s.want) {
			t.Fatalf("%s: cached = %v, want %v", s.name, got, s.want)
		}
	}
	if bytes, files := c.Usage(); bytes != 200 || files != 2 {
		t.Errorf("Usage = %d, %d; want 200, 2", bytes, files)
	}
}

func TestEvictionOversizedFirstWhenReleased(t *testing.T) {
	as := writeBlobs(t, blob(t, 200), blob(t, 50))
	big, small := as[0], as[1]
	dir := t.TempDir()
	c := newCache(t, dir, 150)
	if err := c.Acquire(big.SHA256); err != nil { // pin before fetching
		t.Fatal(err)
	}
	for _, x := range []artifact.Artifact{big, small} {
		if _, err := c.Fetch(t.Context(), x, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := cached(dir, big, small); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("while pinned: cached = %v", got)
	}
	if err := c.Release(big.SHA256); err != nil {
		t.Fatal(err)
	}
	if got := cached(dir, big, small); !slices.Equal(got, []bool{false, true}) {
		t.Fatalf("after release: cached = %v, want big evicted first", got)
	}
	if err := c.Release(big.SHA256); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("second Release: err = %v, want ErrNotFound", err)
	}
}

func TestNewRebuildsLRUFromDisk(t *testing.T) {
	as := writeBlobs(t, blob(t, 100), blob(t, 100), blob(t, 100), blob(t, 100))
	dir := t.TempDir()
	c := newCache(t, dir, 0)
	for _, x := range as[:3] {
		if _, err := c.Fetch(t.Context(), x, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	now := time.Now()
	for i, age := range []time.Duration{time.Hour, 3 * time.Hour, 2 * time.Hour} { // b is oldest
		p := filepath.Join(dir, "sha256", as[i].SHA256)
		if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
	}

	c = newCache(t, dir, 350)
	if bytes, files := c.Usage(); bytes != 300 || files != 3 {
		t.Fatalf("Usage after reopen = %d, %d; want 300, 3", bytes, files)
	}
	if _, err := c.Fetch(t.Context(), as[3], nil); err != nil {
		t.Fatal(err)
	}
	if got := cached(dir, as...); !slices.Equal(got, []bool{true, false, true, true}) {
		t.Errorf("cached = %v, want the oldest (b) evicted", got)
	}
}

func TestNewRemovesCrashLeftovers(t *testing.T) {
	content := blob(t, 1000)
	dir := t.TempDir()
	for _, p := range []string{"tmp/abc.part", "tmp/nested/def.part", "sha256/" + digest(content)} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		data := content
		if strings.HasPrefix(p, "tmp") {
			data = content[:10]
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := newCache(t, dir, 0)
	if got := names(t, dir, "tmp"); len(got) != 0 {
		t.Errorf("tmp/ = %v, want empty", got)
	}
	if bytes, files := c.Usage(); bytes != 1000 || files != 1 {
		t.Errorf("Usage = %d, %d; want 1000, 1", bytes, files)
	}
	// The indexed artifact is a hit: the server is never asked.
	srv := serveBlob(t, nil)
	if _, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil); err != nil {
		t.Fatal(err)
	}
	if h := srv.hits.Load(); h != 0 {
		t.Errorf("HTTP requests = %d, want 0", h)
	}
}

func TestFetchFile(t *testing.T) {
	content := blob(t, 3000)
	src := filepath.Join(t.TempDir(), "model.gguf")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name    string
		a       artifact.Artifact
		want    error
		inPlace bool // the source path itself is returned
	}{
		{name: "with digest is copied into the cache", a: artifact.Artifact{URI: "file://" + src, SHA256: digest(content)}},
		{name: "without digest is used in place", a: artifact.Artifact{URI: "file://" + src}, inPlace: true},
		{name: "localhost host", a: artifact.Artifact{URI: "file://localhost" + src}, inPlace: true},
		{name: "wrong digest", a: artifact.Artifact{URI: "file://" + src, SHA256: digest(nil)}, want: artifact.ErrChecksum},
		{name: "missing with digest", a: artifact.Artifact{URI: "file://" + missing, SHA256: digest(content)}, want: artifact.ErrNotFound},
		{name: "missing without digest", a: artifact.Artifact{URI: "file://" + missing}, want: artifact.ErrNotFound},
		{name: "over max size without digest", a: artifact.Artifact{URI: "file://" + src, MaxSize: 100}, want: artifact.ErrTooLarge},
		{name: "over max size with digest", a: artifact.Artifact{URI: "file://" + src, SHA256: digest(content), MaxSize: 100}, want: artifact.ErrTooLarge},
		{name: "directory", a: artifact.Artifact{URI: "file://" + filepath.Dir(src)}, want: artifact.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newCache(t, dir, 0)
			path, err := c.Fetch(t.Context(), tt.a, nil)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				assertClean(t, dir)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.inPlace != (path == src) {
				t.Errorf("path = %s (source %s), in place = %v", path, src, tt.inPlace)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Error("content differs")
			}
			if _, files := c.Usage(); (files == 0) != tt.inPlace {
				t.Errorf("Usage files = %d, in place = %v", files, tt.inPlace)
			}
		})
	}
}

func TestInvalid(t *testing.T) {
	good := digest(nil)
	tests := []struct {
		name string
		a    artifact.Artifact
	}{
		{"ftp scheme", artifact.Artifact{URI: "ftp://host/x", SHA256: good}},
		{"s3 scheme", artifact.Artifact{URI: "s3://bucket/x", SHA256: good}},
		{"no scheme", artifact.Artifact{URI: "/abs/path", SHA256: good}},
		{"http without digest", artifact.Artifact{URI: "http://127.0.0.1:1/x"}},
		{"http without host", artifact.Artifact{URI: "http:///x", SHA256: good}},
		{"short digest", artifact.Artifact{URI: "http://127.0.0.1:1/x", SHA256: good[:63]}},
		{"non-hex digest", artifact.Artifact{URI: "http://127.0.0.1:1/x", SHA256: strings.Repeat("zz", 32)}},
		{"prefixed digest", artifact.Artifact{URI: "http://127.0.0.1:1/x", SHA256: "sha256:" + good}},
		{"relative file", artifact.Artifact{URI: "file://relative/x"}},
		{"opaque file", artifact.Artifact{URI: "file:x"}},
		{"negative size", artifact.Artifact{URI: "file:///x", Size: -1}},
		{"negative max size", artifact.Artifact{URI: "file:///x", MaxSize: -1}},
	}
	dir := t.TempDir()
	c := newCache(t, dir, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Fetch(t.Context(), tt.a, nil); !errors.Is(err, artifact.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if err := c.Acquire("abc"); !errors.Is(err, artifact.ErrInvalid) {
		t.Errorf("Acquire: err = %v, want ErrInvalid", err)
	}
	if err := c.Release(good); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("Release of unpinned digest: err = %v, want ErrNotFound", err)
	}
	assertClean(t, dir)
}

func TestErrorsRedactQuery(t *testing.T) {
	c := newCache(t, t.TempDir(), 0)
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m?X-Amz-Signature=topsecret", SHA256: digest(nil)}, nil)
	if err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("err = %v, want an error without the query string", err)
	}
}

// flakyServer serves one file with range support (http.ServeContent, with an
// ETag), except that request i < len(cuts) is cut off: the connection closes
// once the body has reached byte cuts[i] of the file; a negative cut answers
// 503 instead.
type flakyServer struct {
	*httptest.Server
	cuts []int

	mu      sync.Mutex
	content []byte
	next    []byte // replaces content after the first request
	etag    string
	ranges  []string // each request's Range header
	ifRange []string // and If-Range header
	sent    atomic.Int64
}

func serveFlaky(t *testing.T, content []byte, cuts ...int) *flakyServer {
	t.Helper()
	s := &flakyServer{cuts: cuts, content: content, etag: `"` + digest(content)[:16] + `"`}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// changeAfterFirst makes the file (and its ETag) change once the first
// request has been served.
func (s *flakyServer) changeAfterFirst(content []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = content
}

func (s *flakyServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	i := len(s.ranges)
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	s.ifRange = append(s.ifRange, r.Header.Get("If-Range"))
	content, etag := s.content, s.etag
	if s.next != nil {
		s.content, s.etag, s.next = s.next, `"`+digest(s.next)[:16]+`"`, nil
	}
	s.mu.Unlock()
	w.Header().Set("ETag", etag)
	if i < len(s.cuts) && s.cuts[i] < 0 {
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	if i >= len(s.cuts) {
		cw := &countingWriter{ResponseWriter: w, n: &s.sent}
		http.ServeContent(cw, r, "model", time.Time{}, bytes.NewReader(content))
		return
	}
	start := 0
	if rng := r.Header.Get("Range"); rng != "" {
		if _, err := fmt.Sscanf(rng, "bytes=%d-", &start); err != nil {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
	}
	conn, bw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if start > 0 {
		fmt.Fprintf(bw, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n", start, len(content)-1, len(content))
	} else {
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\n")
	}
	fmt.Fprintf(bw, "Accept-Ranges: bytes\r\nETag: %s\r\nContent-Length: %d\r\n\r\n", etag, len(content)-start)
	n, _ := bw.Write(content[start:s.cuts[i]])
	s.sent.Add(int64(n))
	bw.Flush()
}

// countingWriter counts the bytes of file content it sends: the body of a
// 200 or 206 answer.
type countingWriter struct {
	http.ResponseWriter
	n      *atomic.Int64
	status int
}

func (w *countingWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	if w.status == 0 || w.status == http.StatusOK || w.status == http.StatusPartialContent {
		w.n.Add(int64(n))
	}
	return n, err
}

func TestFetchResumesDroppedDownload(t *testing.T) {
	content := blob(t, 256<<10)
	srv := serveFlaky(t, content, 1000, -1, 70_000) // a cut, a 503, a cut, then whole
	dir := t.TempDir()
	c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
	var last [2]int64
	var backwards bool
	path, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, func(d, n int64) {
		backwards = backwards || d < last[0]
		last = [2]int64{d, n}
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("cached file differs from the served one (%v)", err)
	}
	if want := []string{"", "bytes=1000-", "bytes=1000-", "bytes=70000-"}; !slices.Equal(srv.ranges, want) {
		t.Errorf("Range headers %q, want %q", srv.ranges, want)
	}
	etag := `"` + digest(content)[:16] + `"`
	for i, ir := range srv.ifRange[1:] {
		if ir != etag {
			t.Errorf("request %d: If-Range %q, want the ETag %s", i+1, ir, etag)
		}
	}
	if n := srv.sent.Load(); n != int64(len(content)) {
		t.Errorf("server sent %d body bytes for a %d-byte file: resumed downloads must not start over", n, len(content))
	}
	if backwards || last != [2]int64{int64(len(content)), int64(len(content))} {
		t.Errorf("progress went backwards (%v) or ended at %v", backwards, last)
	}
	if left := names(t, dir, "tmp"); len(left) != 0 {
		t.Errorf("tmp/ holds %v", left)
	}
}

// A file that changed between the cut and the resume comes back whole
// (If-Range no longer matches): the download starts again from the start,
// never mixing two versions, and the digest refuses the new file.
func TestFetchResumeFailsWhenFileChanged(t *testing.T) {
	content := blob(t, 64<<10)
	srv := serveFlaky(t, content, 1000)
	dir := t.TempDir()
	c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
	srv.changeAfterFirst(blob(t, 64<<10)) // If-Range no longer matches: a full 200 comes back
	_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
	if !errors.Is(err, artifact.ErrChecksum) {
		t.Fatalf("err = %v, want the digest to refuse the changed file", err)
	}
	if want := []string{"", "bytes=1000-", ""}; !slices.Equal(srv.ranges, want) {
		t.Errorf("Range headers %q, want %q (the cut one, the resume, a new download)", srv.ranges, want)
	}
	assertClean(t, dir)
}

func TestFetchGivesUpAfterRepeatedDrops(t *testing.T) {
	content := blob(t, 64<<10)
	var cuts []int
	for i := range 20 {
		cuts = append(cuts, 100*(i+1))
	}
	srv := serveFlaky(t, content, cuts...)
	dir := t.TempDir()
	c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
	_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
	if !errors.Is(err, artifact.ErrFetch) {
		t.Fatalf("err = %v, want ErrFetch", err)
	}
	if n := len(srv.ranges); n != 9 {
		t.Errorf("%d requests, want 9 (the first and 8 resumes)", n)
	}
	assertClean(t, dir)
}

// fetchOK fetches a and fails the test unless that works and the cached
// file holds content. It returns the cached file's path.
func fetchOK(t *testing.T, c *artifact.Cache, a artifact.Artifact, content []byte) string {
	t.Helper()
	path, err := c.Fetch(t.Context(), a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
		t.Fatal("cached file differs from the served one")
	}
	return path
}

// leavePartial writes what a crashed run left: dir/tmp/<digest>.part.
func leavePartial(t *testing.T, dir, d string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", d+".part"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFetchResumesPartialFromEarlierRun(t *testing.T) {
	content := blob(t, 100_000)
	d := digest(content)
	tests := []struct {
		name       string
		partial    []byte
		wantRanges []string
		wantSent   int
	}{
		{"prefix", content[:1000], []string{"bytes=1000-"}, len(content) - 1000},
		// Range not satisfiable: what is on disk cannot be a prefix.
		{"longer than the file", append(slices.Clone(content), 1, 2, 3), []string{"bytes=100003-", ""}, len(content)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			leavePartial(t, dir, d, tt.partial)
			leavePartial(t, dir, "junk", []byte("x")) // not a digest: removed
			c := newCache(t, dir, 0)
			if got := names(t, dir, "tmp"); !slices.Equal(got, []string{d + ".part"}) {
				t.Fatalf("tmp/ after New = %v, want only the partial download", got)
			}
			srv := serveFlaky(t, content)
			var first [2]int64
			path, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, func(n, total int64) {
				if first == [2]int64{} {
					first = [2]int64{n, total}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Fatal("cached file differs from the served one")
			}
			if !slices.Equal(srv.ranges, tt.wantRanges) {
				t.Errorf("Range headers %q, want %q", srv.ranges, tt.wantRanges)
			}
			if n := srv.sent.Load(); n != int64(tt.wantSent) {
				t.Errorf("server sent %d body bytes, want %d", n, tt.wantSent)
			}
			if left := names(t, dir, "tmp"); len(left) != 0 {
				t.Errorf("tmp/ holds %v", left)
			}
		})
	}
}

func TestFetchPartialWhenServerIgnoresRanges(t *testing.T) {
	content := blob(t, 10_000)
	d := digest(content)
	dir := t.TempDir()
	leavePartial(t, dir, d, content[:1000])
	c := newCache(t, dir, 0)
	srv := serveBlob(t, content) // always 200, whole file
	fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, content)
}

// A partial download left by an earlier run that is not a prefix of the
// file (a power cut leaves its last pages unwritten: zeros) fails the
// resumed download's digest; the download then runs once more from the
// start, and succeeds. It failed the deployment with ErrChecksum though
// the artifact at its URI was fine.
func TestFetchCorruptPartialIsDropped(t *testing.T) {
	content := blob(t, 10_000)
	d := digest(content)
	for name, partial := range map[string][]byte{
		"not a prefix": blob(t, 1000),
		"power cut":    append(slices.Clone(content[:936]), make([]byte, 64)...),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			leavePartial(t, dir, d, partial)
			c := newCache(t, dir, 0)
			srv := serveFlaky(t, content)
			a := artifact.Artifact{URI: srv.URL + "/m", SHA256: d}
			var last int64
			path, err := c.Fetch(t.Context(), a, func(n, _ int64) {
				if n < last {
					t.Errorf("progress went back from %d to %d", last, n)
				}
				last = n
			})
			if err != nil {
				t.Fatalf("a damaged partial download failed the fetch: %v", err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Fatal("cached file differs from the served one")
			}
			if left := names(t, dir, "tmp"); len(left) != 0 {
				t.Fatalf("tmp/ holds %v", left)
			}
			if want := []string{"bytes=1000-", ""}; !slices.Equal(srv.ranges, want) {
				t.Errorf("Range headers %q, want %q (the resume, then the whole file)", srv.ranges, want)
			}
		})
	}
	// A file that is wrong from the start still fails, after one download.
	dir := t.TempDir()
	leavePartial(t, dir, d, content[:1000])
	c := newCache(t, dir, 0)
	srv := serveFlaky(t, blob(t, 10_000)) // not the digest's content
	if _, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, nil); !errors.Is(err, artifact.ErrChecksum) {
		t.Fatalf("err = %v, want ErrChecksum", err)
	}
	if want := []string{"bytes=1000-", ""}; !slices.Equal(srv.ranges, want) {
		t.Errorf("Range headers %q, want %q (one download from the start, no more)", srv.ranges, want)
	}
	if left := names(t, dir, "tmp"); len(left) != 0 {
		t.Fatalf("tmp/ holds %v after a checksum failure", left)
	}
}

func TestNewDropsOldPartials(t *testing.T) {
	content := blob(t, 1000)
	d := digest(content)
	dir := t.TempDir()
	leavePartial(t, dir, d, content[:10])
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "tmp", d+".part"), old, old); err != nil {
		t.Fatal(err)
	}
	newCache(t, dir, 0)
	if left := names(t, dir, "tmp"); len(left) != 0 {
		t.Errorf("tmp/ = %v, want a 2-day-old partial removed", left)
	}
}

func TestFetchCompletePartialNeedsNoRequest(t *testing.T) {
	content := blob(t, 1000)
	d := digest(content)
	dir := t.TempDir()
	leavePartial(t, dir, d, content) // a crash came between the last write and the rename
	c := newCache(t, dir, 0)
	srv := serveBlob(t, content)
	fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, content)
	if h := srv.hits.Load(); h != 0 {
		t.Errorf("HTTP requests = %d, want 0", h)
	}
}

// TestFetchReplacesOddPartial: whatever sits at tmp/<digest>.part when a
// download starts (a directory, a symlink) is replaced, never followed.
func TestFetchReplacesOddPartial(t *testing.T) {
	content := blob(t, 1000)
	d := digest(content)
	for _, kind := range []string{"directory", "symlink"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			c := newCache(t, dir, 0)
			part := filepath.Join(dir, "tmp", d+".part")
			target := filepath.Join(t.TempDir(), "target")
			if err := os.WriteFile(target, []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}
			var err error
			if kind == "directory" {
				err = os.MkdirAll(filepath.Join(part, "sub"), 0o755)
			} else {
				err = os.Symlink(target, part)
			}
			if err != nil {
				t.Fatal(err)
			}
			srv := serveBlob(t, content)
			path := fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, content)
			if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("cached artifact is not a regular file: %v %v", fi, err)
			}
			if got, _ := os.ReadFile(target); string(got) != "keep me" {
				t.Errorf("the symlink's target was written: %q", got)
			}
		})
	}
}

// A download cut off by a server that does not offer ranges (no
// Accept-Ranges) is started again from the start, up to 8 times: one cut
// failed the deployment. A server that always cuts fails it after those.
func TestFetchRestartsCutDownloadWithoutRanges(t *testing.T) {
	content := blob(t, 100_000)
	for _, tc := range []struct {
		name     string
		cuts     int64
		ok       bool
		requests int64
	}{
		{"cut twice", 2, true, 3},
		{"always cut", 1 << 30, false, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				if requests.Add(1) <= tc.cuts {
					w.Write(content[:len(content)/3])
					w.(http.Flusher).Flush()
					if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
						conn.Close()
					}
					return
				}
				w.Write(content)
			}))
			t.Cleanup(srv.Close)
			dir := t.TempDir()
			c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
			_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, artifact.ErrFetch) {
				t.Fatalf("err = %v", err)
			}
			if got := requests.Load(); got != tc.requests {
				t.Fatalf("%d requests, want %d", got, tc.requests)
			}
			if !tc.ok {
				assertClean(t, dir)
			}
		})
	}
}
