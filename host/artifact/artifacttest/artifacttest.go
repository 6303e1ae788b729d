// Package artifacttest serves model files over real HTTP for tests of
// fetching, admission and crash recovery.
package artifacttest

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// Server serves files by path. Unknown paths are 404. A path can be
// stalled: the handler sends half the body, then waits for the stall to be
// released or the client to go away. Every request is counted, and so is
// the most downloads in flight at once.
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
}

// New starts a server that stops when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{files: map[string][]byte{}, stalls: map[string]chan struct{}{}, hits: map[string]int{},
		Stalled: make(chan string, 16)}
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
	s.mu.Lock()
	s.stalls[path] = ch
	s.mu.Unlock()
	return sync.OnceFunc(func() {
		s.mu.Lock()
		delete(s.stalls, path)
		s.mu.Unlock()
		close(ch)
	})
}

func (s *Server) releaseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, ch := range s.stalls {
		close(ch)
		delete(s.stalls, p)
	}
}

// Hits is the number of requests for path.
func (s *Server) Hits(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

// Digest is the hex SHA-256 of b, as artifacts carry it.
func Digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
