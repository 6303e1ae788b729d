package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// TestFetchResumesCutBeforeFirstByte: a server that offers ranges and drops
// the connection right after the headers left nothing to resume from; the
// download asks again (from byte 0) instead of failing because the answer
// to that is the whole file.
func TestFetchResumesCutBeforeFirstByte(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request, content []byte)
	}{
		{"range served", func(w http.ResponseWriter, r *http.Request, content []byte) {
			http.ServeContent(w, r, "model", time.Time{}, bytes.NewReader(content))
		}},
		{"bytes=0- answered whole", func(w http.ResponseWriter, r *http.Request, content []byte) {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.Write(content)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := blob(t, 10_000)
			var hits atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("ETag", `"v1"`)
				w.Header().Set("Accept-Ranges", "bytes")
				if hits.Add(1) == 1 {
					w.Header().Set("Content-Length", strconv.Itoa(len(content)))
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler) // closes the connection: no body
				}
				tc.serve(w, r, content)
			}))
			t.Cleanup(srv.Close)
			c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(time.Millisecond))
			fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, content)
			if n := hits.Load(); n != 2 {
				t.Errorf("%d requests, want 2", n)
			}
		})
	}
}

// TestFetchDeadlineWhileResumingSaysWhy: a download whose time runs out
// while it waits to resume (or to start again from byte 0) says what kept
// failing, as one waiting to repeat its first request does, not just that
// the time ran out.
func TestFetchDeadlineWhileResumingSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ranges bool
		want   string
	}{
		{"resume refused", true, "503"},
		{"no ranges", false, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := blob(t, 10_000)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Range") != "" {
					http.Error(w, "busy", http.StatusServiceUnavailable)
					return
				}
				if tc.ranges {
					w.Header().Set("Accept-Ranges", "bytes")
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				w.WriteHeader(http.StatusOK)
				w.Write(content[:len(content)/2])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}))
			t.Cleanup(srv.Close)
			// Waits of 30, 60, 120 and 240 ms: the time runs out in the last.
			c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(30*time.Millisecond))
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			_, err := c.Fetch(ctx, artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want the deadline and %q", err, tc.want)
			}
		})
	}
}

// TestFetchReplacesDirectoryNamedByDigest: a directory where an artifact
// belongs (left at start-up, or put there behind a running cache) is not
// an artifact: the download replaces it instead of failing to rename onto
// it, at every fetch, after downloading the whole file.
func TestFetchReplacesDirectoryNamedByDigest(t *testing.T) {
	content := blob(t, 2000)
	srv := serveBlob(t, content)
	a := artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}
	obj := func(dir string) string { return filepath.Join(dir, "sha256", digest(content)) }

	t.Run("at start-up", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(obj(dir), "x"), 0o755); err != nil {
			t.Fatal(err)
		}
		c := newCache(t, dir, 0)
		if path := fetchOK(t, c, a, content); path != obj(dir) {
			t.Errorf("path %s, want %s", path, obj(dir))
		}
	})
	t.Run("behind a running cache", func(t *testing.T) {
		dir := t.TempDir()
		c := newCache(t, dir, 0)
		fetchOK(t, c, a, content)
		if err := os.Remove(obj(dir)); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(obj(dir), "x"), 0o755); err != nil {
			t.Fatal(err)
		}
		fetchOK(t, c, a, content)
		if n, files := c.Usage(); n != int64(len(content)) || files != 1 {
			t.Errorf("Usage = %d bytes, %d files; want %d, 1", n, files, len(content))
		}
	})
}

// TestPinDuringVerificationKeepsCopy: a second deployment pinning an
// artifact while the first has it hashed (the first fetch after a restart)
// sets the file's time for the LRU order; that is the cache's own doing,
// not a change on disk, and must not get the good copy deleted and
// downloaded again.
func TestPinDuringVerificationKeepsCopy(t *testing.T) {
	content := blob(t, 2000)
	srv := serveBlob(t, content)
	d := digest(content)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sha256", d), content, 0o444); err != nil {
		t.Fatal(err)
	}
	c := newCache(t, dir, 0)
	if err := c.Acquire(d); err != nil {
		t.Fatal(err)
	}
	defer artifact.SetHookBeforeVerify(func(string) {
		if err := c.Acquire(d); err != nil {
			t.Error(err)
		}
	})()
	fetchOK(t, c, artifact.Artifact{URI: srv.URL + "/m", SHA256: d}, content)
	if n := srv.hits.Load(); n != 0 {
		t.Errorf("%d downloads of a good cached copy, want 0", n)
	}
}

// TestFetchResumeRefusedForGoodEndsDownload: a resume answered with a
// refusal that asking again cannot change (a pre-signed URL that expired
// mid-download: 403; a file deleted: 404) ends the download at once, saying
// so, instead of being asked 8 times more and reported as a flaky
// connection.
func TestFetchResumeRefusedForGoodEndsDownload(t *testing.T) {
	for _, tc := range []struct {
		code     int
		notFound bool
	}{
		{http.StatusForbidden, false},
		{http.StatusNotFound, true},
	} {
		t.Run(strconv.Itoa(tc.code), func(t *testing.T) {
			content := blob(t, 10_000)
			var hits atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if r.Header.Get("Range") != "" {
					http.Error(w, "no", tc.code)
					return
				}
				w.Header().Set("Accept-Ranges", "bytes")
				w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				w.WriteHeader(http.StatusOK)
				w.Write(content[:len(content)/2])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}))
			t.Cleanup(srv.Close)
			dir := t.TempDir()
			c := newCache(t, dir, 0, artifact.WithResumeBackoff(time.Millisecond))
			_, err := c.Fetch(t.Context(), artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
			if err == nil || !strings.Contains(err.Error(), strconv.Itoa(tc.code)) || errors.Is(err, artifact.ErrNotFound) != tc.notFound {
				t.Fatalf("err = %v, want HTTP %d (ErrNotFound: %v)", err, tc.code, tc.notFound)
			}
			if n := hits.Load(); n != 2 {
				t.Errorf("%d requests, want 2 (the cut one and one resume)", n)
			}
			assertClean(t, dir)
		})
	}
}
