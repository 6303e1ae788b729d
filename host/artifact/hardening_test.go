package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// A file:// artifact naming a FIFO is refused at once. Opening a FIFO for
// reading blocks until a writer comes, beyond the reach of any context: the
// download goroutine hung, the Fetch whose context ended waited for it, and
// so would Close.
func TestFetchFileFIFORefused(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "model.fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, tt := range []struct {
		name string
		a    artifact.Artifact
	}{
		{"with digest", artifact.Artifact{URI: "file://" + fifo, SHA256: digest(nil)}},
		{"in place", artifact.Artifact{URI: "file://" + fifo}},
		{"char device", artifact.Artifact{URI: "file:///dev/zero", SHA256: digest(nil)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newCache(t, dir, 0)
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() { _, err := c.Fetch(ctx, tt.a, nil); done <- err }()
			select {
			case err := <-done:
				if !errors.Is(err, artifact.ErrInvalid) {
					t.Errorf("err = %v, want ErrInvalid", err)
				}
			case <-time.After(3 * time.Second):
				t.Error("Fetch of a FIFO still running 3 s after its context ended")
				// Unblock the open so the goroutines end.
				if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
					w.Close()
				}
				<-done
			}
			assertClean(t, dir)
		})
	}
}

// A file:// URI has no query or fragment: file:///m/v1#2.onnx opened /m/v1,
// another file, and used it in place without a word.
func TestFetchFileURIWithQueryOrFragmentRefused(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"v1": "wrong file", "v1#2.onnx": "right file", "v1?x": "right file"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := newCache(t, t.TempDir(), 0)
	for _, uri := range []string{"file://" + dir + "/v1#2.onnx", "file://" + dir + "/v1?x", "file://" + dir + "/v1?"} {
		if path, err := c.Fetch(t.Context(), artifact.Artifact{URI: uri}, nil); !errors.Is(err, artifact.ErrInvalid) {
			t.Errorf("%s: path %q, err %v, want ErrInvalid", uri, path, err)
		}
	}
	// Escaped, the same names work.
	for _, uri := range []string{"file://" + dir + "/v1%232.onnx", "file://" + dir + "/v1%3Fx"} {
		path, err := c.Fetch(t.Context(), artifact.Artifact{URI: uri}, nil)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if got, _ := os.ReadFile(path); string(got) != "right file" {
			t.Errorf("%s: read %q from %s", uri, got, path)
		}
	}
}

// A cached file that no longer is what its name says (a flipped bit, a
// truncated file) is found out before it is served, removed and fetched
// again. It was served as is after a restart (or failed every Fetch with
// ErrChecksum when the spec declared its size), and served truncated by the
// same process when its size changed behind the cache's back.
func TestFetchReverifiesCachedCopy(t *testing.T) {
	content := blob(t, 100_000)
	d := digest(content)
	for _, tt := range []struct {
		name    string
		restart bool
		size    int64 // declared
		damage  func(path string) error
		refetch bool
	}{
		{"intact after restart", true, 0, func(string) error { return nil }, false},
		{"bit flip after restart", true, 0, func(p string) error {
			b := bytes.Clone(content)
			b[len(b)/2] ^= 0x10
			return os.WriteFile(p, b, 0o444)
		}, true},
		{"truncated after restart", true, 0, func(p string) error { return os.Truncate(p, 500) }, true},
		{"truncated after restart, size declared", true, int64(len(content)), func(p string) error { return os.Truncate(p, 500) }, true},
		{"truncated while running", false, 0, func(p string) error { return os.Truncate(p, 500) }, true},
		{"bit flip while running", false, 0, func(p string) error {
			b := bytes.Clone(content)
			b[len(b)/2] ^= 0x10
			return os.WriteFile(p, b, 0o444)
		}, true},
		{"replaced by a symlink", false, 0, func(p string) error {
			other := filepath.Join(filepath.Dir(p), "..", "elsewhere")
			if err := os.WriteFile(other, content[:10], 0o644); err != nil {
				return err
			}
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink(other, p)
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := serveBlob(t, content)
			dir := t.TempDir()
			c := newCache(t, dir, 0)
			a := artifact.Artifact{URI: srv.URL + "/m", SHA256: d, Size: tt.size}
			path := fetchOK(t, c, a, content)
			if tt.restart {
				c.Close()
				c = newCache(t, dir, 0)
			}
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := tt.damage(path); err != nil {
				t.Fatal(err)
			}
			var calls [][2]int64
			got, err := c.Fetch(t.Context(), a, func(n, total int64) { calls = append(calls, [2]int64{n, total}) })
			if err != nil {
				t.Fatalf("Fetch of a damaged cached copy: %v", err)
			}
			if b, _ := os.ReadFile(got); !bytes.Equal(b, content) {
				t.Fatalf("served %d bytes that are not the artifact", len(b))
			}
			if fi, err := os.Lstat(got); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("cached artifact is not a regular file: %v", err)
			}
			wantHits := int64(1)
			if tt.refetch {
				wantHits = 2
			}
			if h := srv.hits.Load(); h != wantHits {
				t.Errorf("HTTP requests = %d, want %d", h, wantHits)
			}
			if n := int64(len(content)); len(calls) == 0 || calls[len(calls)-1] != [2]int64{n, n} {
				t.Errorf("progress %v, want it to end with (%d, %d)", calls, n, n)
			}
			if b, f := c.Usage(); b != int64(len(content)) || f != 1 {
				t.Errorf("Usage = %d bytes, %d files", b, f)
			}
			// Verified once: the next hit reads nothing and asks nobody.
			if _, err := c.Fetch(t.Context(), a, nil); err != nil || srv.hits.Load() != wantHits {
				t.Errorf("second Fetch: %v, HTTP requests %d", err, srv.hits.Load())
			}
		})
	}
}

// Verifying a cached copy found on disk is shared by concurrent Fetches and
// does not count against the budget twice.
func TestFetchVerificationShared(t *testing.T) {
	content := blob(t, 1<<20)
	srv := serveBlob(t, content)
	dir := t.TempDir()
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}
	first := newCache(t, dir, 0) // the run before a restart
	fetchOK(t, first, a, content)
	first.Close()
	c := newCache(t, dir, 0)
	errs := make(chan error, 8)
	for range 8 {
		go func() { _, err := c.Fetch(t.Context(), a, nil); errs <- err }()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if b, f := c.Usage(); b != int64(len(content)) || f != 1 {
		t.Errorf("Usage = %d bytes, %d files", b, f)
	}
	if h := srv.hits.Load(); h != 1 {
		t.Errorf("HTTP requests = %d, want 1", h)
	}
}

// rangeLiar serves content with Accept-Ranges and cuts the first (plain)
// response at half; range requests are answered by answer.
func rangeLiar(t *testing.T, content []byte, answer func(w http.ResponseWriter, from int)) (*httptest.Server, *atomic.Int64) {
	var reqs atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		var from int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil {
			answer(w, from)
			return
		}
		w.Header().Set("Accept-Ranges", "bytes")
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.WriteHeader(http.StatusOK)
		w.Write(content[:len(content)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops
	}))
	t.Cleanup(srv.Close)
	return srv, &reqs
}

// A 206 without Content-Length whose body goes on past its Content-Range is
// cut there. It was written to disk without end (only the digest, checked
// at the end of the body, refused it).
func TestFetchRangeBodyBoundedByContentRange(t *testing.T) {
	content := blob(t, 100_000)
	var sent atomic.Int64
	srv, _ := rangeLiar(t, content, func(w http.ResponseWriter, from int) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(content)-1, len(content)))
		w.WriteHeader(http.StatusPartialContent)
		chunk := make([]byte, 32<<10)
		for range 1024 { // 32 MiB, chunked
			if _, err := w.Write(chunk); err != nil {
				return
			}
			sent.Add(int64(len(chunk)))
		}
	})
	dir := t.TempDir()
	c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
	var most int64
	_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, func(n, _ int64) { most = max(most, n) })
	if !errors.Is(err, artifact.ErrFetch) {
		t.Errorf("err = %v, want ErrFetch", err)
	}
	if most > int64(len(content))+1 {
		t.Errorf("wrote %d bytes of a %d-byte artifact", most, len(content))
	}
	t.Logf("err %v; progress reached %d; server sent %d", err, most, sent.Load())
	assertClean(t, dir)
}

// A range request that a server answers with another range (here the whole
// file as a 206) starts over, as when it ignores the range: the download
// left by an earlier run failed with ErrFetch instead.
func TestFetchPartialWhenServerAnswersAnotherRange(t *testing.T) {
	content := blob(t, 10_000)
	d := digest(content)
	dir := t.TempDir()
	leavePartial(t, dir, d, content[:1000])
	c := newCache(t, dir, 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		if r.Header.Get("Range") != "" {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(content)-1, len(content)))
			w.WriteHeader(http.StatusPartialContent)
		}
		w.Write(content)
	}))
	t.Cleanup(srv.Close)
	fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, content)
}

// A server whose Content-Length promised more than the file holds answers
// the resume with 416: asking again cannot help, so the download ends at
// once instead of retrying all 8 resumes with backoff (about 9 s by
// default).
func TestFetchResumeUnsatisfiableEndsDownload(t *testing.T) {
	content := blob(t, 100_000)
	srv, reqs := rangeLiar(t, content, func(w http.ResponseWriter, from int) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(content)/2))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
	})
	dir := t.TempDir()
	c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
	_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
	if !errors.Is(err, artifact.ErrFetch) {
		t.Errorf("err = %v, want ErrFetch", err)
	}
	if n := reqs.Load(); n != 2 {
		t.Errorf("%d requests, want 2 (the download and one resume)", n)
	}
	assertClean(t, dir)
}

// A Fetch whose context ends while it hashes a cached copy found on disk
// leaves that copy alone: a later Fetch verifies it and needs no download.
func TestFetchCancelledVerificationKeepsCopy(t *testing.T) {
	content := blob(t, 32<<20)
	srv := serveBlob(t, content)
	dir := t.TempDir()
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}
	first := newCache(t, dir, 0) // the run before a restart
	path := fetchOK(t, first, a, content)
	first.Close()
	c := newCache(t, dir, 0)
	ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
	defer cancel()
	_, err := c.Fetch(ctx, a, nil)
	t.Logf("fetch with a 1 ms deadline: %v", err)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("cached copy gone after a cancelled verification: %v", err)
	}
	fetchOK(t, c, a, content)
	if h := srv.hits.Load(); h != 1 {
		t.Errorf("HTTP requests = %d, want 1", h)
	}
}
