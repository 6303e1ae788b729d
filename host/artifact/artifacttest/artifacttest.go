// Package artifacttest serves model files over real HTTP for tests of
// fetching, admission and crash recovery.
package artifacttest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// Server serves files by path. Unknown paths are 404. A request for
// "Range: bytes=N-" (0 < N < size) of a path that is not stalled gets a 206
// with the rest. A path can be stalled: the handler sends half the body,
// then waits for the stall to be released or the client to go away. Every
// request is counted, with its Range header, and so is the most downloads
// in flight at once.
type Server struct {
	*httptest.Server
	// Delay is added to every request, to make overlap visible. Set it
	// while no request is in flight.
	Delay time.Duration
	// Stalled receives the path of each stalled request (it holds 16; more
	// are dropped).
	Stalled chan string
	// Total counts requests; MaxInflight is the most in flight at once.
	Total, MaxInflight atomic.Int64

	inflight atomic.Int64
	mu       sync.Mutex
	files    map[string][]byte
	stalls   map[string]chan struct{}
	hits     map[string]int
	ranges   map[string][]string
	pending  []func()                 // releases of stalls taken off by Unstall, called at the end
	release  map[chan struct{}]func() // each stall's release, closing it once
}

// New starts a server that stops when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{files: map[string][]byte{}, stalls: map[string]chan struct{}{}, release: map[chan struct{}]func(){}, hits: map[string]int{},
		ranges: map[string][]string{}, Stalled: make(chan string, 16)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	t.Cleanup(s.releaseAll) // runs before Close, which waits for handlers
	return s
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.Total.Add(1)
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for {
		m := s.MaxInflight.Load()
		if n <= m || s.MaxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	s.mu.Lock()
	data, ok := s.files[r.URL.Path]
	stall := s.stalls[r.URL.Path]
	s.hits[r.URL.Path]++
	s.ranges[r.URL.Path] = append(s.ranges[r.URL.Path], r.Header.Get("Range"))
	s.mu.Unlock()
	if s.Delay > 0 {
		select {
		case <-time.After(s.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	var from int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil && stall == nil && from > 0 && from < len(data) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(data)-1, len(data)))
		w.Header().Set("Content-Length", strconv.Itoa(len(data)-from))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[from:])
		return
	}
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if stall == nil {
		w.Write(data)
		return
	}
	half := len(data) / 2
	w.Write(data[:half])
	w.(http.Flusher).Flush()
	select {
	case s.Stalled <- r.URL.Path:
	default:
	}
	select {
	case <-stall:
		w.Write(data[half:])
	case <-r.Context().Done():
	}
}

// Add serves data at path and returns the artifact that points at it.
func (s *Server) Add(path string, data []byte) artifact.Artifact {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = data
	return artifact.Artifact{URI: s.URL + path, SHA256: Digest(data)}
}

// Stall makes requests for path hang after half the body until release.
func (s *Server) Stall(path string) (release func()) {
	ch := make(chan struct{})
	closeOnce := sync.OnceFunc(func() { close(ch) })
	s.mu.Lock()
	s.stalls[path] = ch
	s.release[ch] = closeOnce
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.stalls[path] == ch {
			delete(s.stalls, path)
		}
		s.mu.Unlock()
		closeOnce()
	}
}

// Unstall serves later requests for path whole again; a request already
// stalled keeps waiting for its release or for its client to go away.
func (s *Server) Unstall(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.stalls[path]; ok {
		delete(s.stalls, path)
		s.pending = append(s.pending, s.release[ch])
	}
}

func (s *Server) releaseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, ch := range s.stalls {
		s.release[ch]()
		delete(s.stalls, p)
	}
	for _, release := range s.pending {
		release()
	}
	s.pending = nil
}

// Hits is the number of requests for path.
func (s *Server) Hits(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

// Ranges lists the Range header of each request for path ("" for none).
func (s *Server) Ranges(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ranges[path])
}

// Digest is the hex SHA-256 of b, as artifacts carry it.
func Digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
