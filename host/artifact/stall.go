package artifact

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// errStalled is the cut of a body that sent nothing for the stall timeout.
var errStalled = errors.New("the server sent nothing")

// stallReader is an HTTP response body that is closed when a Read waits
// longer than d for a byte: the Read then fails as if the connection had
// been cut, and the download resumes (or starts again). Time spent outside
// Read (writing to disk) does not count.
type stallReader struct {
	rc    io.ReadCloser
	d     time.Duration
	t     *time.Timer
	fired atomic.Bool
}

func newStallReader(rc io.ReadCloser, d time.Duration) *stallReader {
	s := &stallReader{rc: rc, d: d}
	s.t = time.AfterFunc(time.Hour, func() {
		s.fired.Store(true)
		rc.Close() // unblocks the Read
	})
	s.t.Stop()
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	if s.fired.Load() {
		return 0, fmt.Errorf("%w for %v", errStalled, s.d)
	}
	s.t.Reset(s.d)
	n, err := s.rc.Read(p)
	if !s.t.Stop() && s.fired.Load() {
		return n, fmt.Errorf("%w for %v", errStalled, s.d)
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.t.Stop()
	return s.rc.Close()
}
