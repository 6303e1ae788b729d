//go:build linux

package engine

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// newWaker returns a timerfd-backed waker, or a Go timer where the kernel
// refuses timerfds (a seccomp filter).
//
// Why not a Go timer: when every thread of the process is idle, the Go
// runtime sleeps in epoll_wait, whose timeout is in whole milliseconds, so a
// time.Timer of 200 µs fires after about 1.1 ms. A batch waiting for its
// max_queue_delay of a few hundred microseconds then waited four times as
// long. A timerfd is a file that the runtime's poller watches like a socket:
// it wakes the poller at the time set, to the microsecond.
func newWaker() waker {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return newGoWaker()
	}
	c := make(chan struct{}, 1)
	w := &fdWaker{fd: fd, f: os.NewFile(uintptr(fd), "timerfd"), c: c, exited: make(chan struct{}), fallback: goWakerOn(c)}
	go w.loop()
	return w
}

// fdWaker is a waker over a timerfd. Its goroutine reads the timerfd (parked
// in the runtime's poller, no thread held) and signals c; Close ends it.
type fdWaker struct {
	fd     int
	f      *os.File
	c      chan struct{}
	exited chan struct{}
	// broken: reading the timerfd failed (the runtime's poller could not
	// take it, say): Reset falls back to fallback, a Go timer on c.
	broken   atomic.Bool
	fallback *goWaker
}

func (w *fdWaker) C() <-chan struct{} { return w.c }

// Reset arms the timer to fire once after d (at once when d <= 0). A
// signal of the previous arming not yet received may still come: the
// batcher treats a wake-up as "look again", so an early one costs a check.
func (w *fdWaker) Reset(d time.Duration) {
	if w.broken.Load() {
		w.fallback.Reset(d)
		return
	}
	if d <= 0 {
		d = 1 // a zero it_value would disarm the timer
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(w.fd, 0, &spec, nil); err != nil {
		// Not expected once created (EINVAL is ruled out above); the
		// batcher must still wake, so fire now: it looks again and re-arms.
		signal(w.c)
	}
}

func (w *fdWaker) Stop() {
	w.fallback.Stop()
	_ = unix.TimerfdSettime(w.fd, 0, &unix.ItimerSpec{}, nil)
}

// Close stops the goroutine and waits for it; the timerfd is closed.
func (w *fdWaker) Close() {
	w.Stop()
	_ = w.f.Close() // wakes a Read parked in the poller with os.ErrClosed
	<-w.exited
}

func (w *fdWaker) loop() {
	defer close(w.exited)
	var buf [8]byte // the number of expirations since the last read
	for {
		if _, err := w.f.Read(buf[:]); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				// The poller could not take the timerfd (an epoll limit):
				// Go timers from now on, and a wake-up now, so that the
				// batcher looks again and re-arms through them.
				w.broken.Store(true)
				signal(w.c)
			}
			return
		}
		signal(w.c)
	}
}
