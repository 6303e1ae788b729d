package artifact_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// A server that stops sending in the middle of a body, without closing the
// connection (a stuck proxy, a peer gone behind a NAT), held the download
// until fetch_timeout (30 min by default); so did one that never answered
// the request. After the stall timeout the connection is dropped and the
// download resumes from where it was, or the request is made again.
func TestFetchStalledServerResumes(t *testing.T) {
	for _, tc := range []struct {
		name string
		// stall serves the first request without finishing it.
		stall func(w http.ResponseWriter, r *http.Request, content []byte)
		// wantRange is the Range of the second request.
		wantRange string
	}{
		{"body", func(w http.ResponseWriter, r *http.Request, content []byte) {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.WriteHeader(http.StatusOK)
			w.Write(content[:len(content)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // until the client drops the connection
		}, "bytes=5000-"},
		{"headers", func(w http.ResponseWriter, r *http.Request, content []byte) {
			<-r.Context().Done()
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := blob(t, 10_000)
			var hits atomic.Int64
			var second atomic.Value
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("ETag", `"v1"`)
				w.Header().Set("Accept-Ranges", "bytes")
				switch hits.Add(1) {
				case 1:
					tc.stall(w, r, content)
					return
				case 2:
					second.Store(r.Header.Get("Range"))
				}
				http.ServeContent(w, r, "model", time.Time{}, bytes.NewReader(content))
			}))
			t.Cleanup(srv.Close)
			c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(time.Millisecond), artifact.WithStallTimeout(200*time.Millisecond))
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			path, err := c.Fetch(ctx, artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Fatal("cached file differs from the served one")
			}
			if got, _ := second.Load().(string); got != tc.wantRange {
				t.Errorf("second request's Range %q, want %q", got, tc.wantRange)
			}
		})
	}
}

// Behind a load balancer whose backends give the same file other ETags (or
// a proxy that drops Range), a resume comes back whole (HTTP 200): the
// download starts again from the start and succeeds. It failed with "range
// request refused" after one dropped connection.
func TestFetchResumeAnsweredWholeStartsOver(t *testing.T) {
	content := blob(t, 64<<10)
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("ETag", fmt.Sprintf(`"backend-%d"`, n))
		if n == 1 {
			w.Header().Set("Accept-Ranges", "bytes")
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.WriteHeader(http.StatusOK)
			w.Write(content[:1000])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // cut
		}
		http.ServeContent(w, r, "model", time.Time{}, bytes.NewReader(content)) // If-Range "backend-1" does not match: 200
	}))
	t.Cleanup(srv.Close)
	c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	path, err := c.Fetch(ctx, artifact.Artifact{URI: srv.URL + "/m", SHA256: digest(content)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
		t.Fatal("cached file differs from the served one")
	}
	if n := hits.Load(); n != 3 {
		t.Errorf("%d requests, want 3 (the cut one, the resume answered whole, a new download)", n)
	}
}
