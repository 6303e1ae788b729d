package artifact_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// encodedServer serves body with Content-Encoding: enc. Range requests get
// a 206 of the encoded bytes, or (ignoreRange) the whole encoded body with
// a 200. While stall is set a plain request hangs after half the body.
func encodedServer(t *testing.T, body []byte, enc string, ignoreRange bool, stall *atomic.Bool, ranges *atomic.Int64) *httptest.Server {
	return encodedServerCounting(t, body, enc, ignoreRange, stall, ranges, new(atomic.Int64))
}

func encodedServerCounting(t *testing.T, body []byte, enc string, ignoreRange bool, stall *atomic.Bool, ranges, plain *atomic.Int64) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "" {
			plain.Add(1)
		}
		w.Header().Set("Content-Encoding", enc)
		w.Header().Set("Accept-Ranges", "bytes")
		var from int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil && from > 0 {
			ranges.Add(1)
			if !ignoreRange {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)-1, len(body)))
				w.Header().Set("Content-Length", strconv.Itoa(len(body)-from))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(body[from:])
				return
			}
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		if !stall.Load() {
			w.Write(body)
			return
		}
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

// interruptThenResume fetches a with a stalled server, closes the cache
// (the partial is kept), and fetches again with a new cache on dir.
func interruptThenResume(t *testing.T, a artifact.Artifact, stall *atomic.Bool) (string, error) {
	dir := t.TempDir()
	stall.Store(true)
	c1 := newCache(t, dir, 0)
	done := make(chan error, 1)
	go func() { _, err := c1.Fetch(t.Context(), a, nil); done <- err }()
	part := filepath.Join(dir, "tmp", a.SHA256+".part")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if fi, err := os.Stat(part); err == nil && fi.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no partial download")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	c1.Close()
	if err := <-done; !errors.Is(err, artifact.ErrClosed) {
		t.Fatalf("interrupted fetch: %v", err)
	}
	if _, err := os.Stat(part); err != nil {
		t.Fatalf("partial not kept: %v", err)
	}
	stall.Store(false)
	return newCache(t, dir, 0).Fetch(t.Context(), a, nil)
}

// A server that ignores the range of a gzip-encoded object and answers 200
// with the whole encoded body (not decoded by Go: the request had a Range)
// is asked again plainly, so the fetch works as it does uninterrupted.
func TestGzipIgnoredRangeAfterRestart(t *testing.T) {
	content := blob(t, 256<<10)
	var stall atomic.Bool
	var ranges atomic.Int64
	srv := encodedServer(t, gzipped(content), "gzip", true, &stall, &ranges)
	a := artifact.Artifact{URI: srv.URL + "/model.bin", SHA256: digest(content)}
	fetchOK(t, newCache(t, t.TempDir(), 0), a, content) // uninterrupted: fine
	_, err := interruptThenResume(t, a, &stall)
	t.Logf("resumed after restart: %v (range requests %d)", err, ranges.Load())
	if err != nil {
		t.Errorf("a fetch that works uninterrupted fails once resumed after a restart: %v", err)
	}
}

// A coding Go never decodes (br, zstd...) is stored as sent, so its 206 of
// encoded bytes follows the bytes on disk: it resumes.
func TestUndecodedEncodingResumes(t *testing.T) {
	body := blob(t, 256<<10) // the "br" bytes as stored; the digest is theirs
	var stall atomic.Bool
	var ranges, plain atomic.Int64
	srv := encodedServerCounting(t, body, "br", false, &stall, &ranges, &plain)
	a := artifact.Artifact{URI: srv.URL + "/model.bin", SHA256: digest(body)}
	path, err := interruptThenResume(t, a, &stall)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	t.Logf("after restart: content ok=%v; requests: %d with Range, %d whole (the first was the cut one)", bytes.Equal(got, body), ranges.Load(), plain.Load())
	if plain.Load() != 1 {
		t.Errorf("the partial was thrown away and the whole object fetched again (%d whole requests), though the 206's encoded bytes follow the encoded bytes on disk", plain.Load())
	}
}
