package engine

import "time"

// waker wakes the batcher when a waiting batch falls due. C receives one
// signal per firing (at most one pending); a signal can come early, after a
// Reset, from an arming it replaced: the receiver must look at the time
// again. Close stops it for good and releases what it holds.
type waker interface {
	C() <-chan struct{}
	Reset(d time.Duration)
	Stop()
	Close()
}

// goWaker is a waker over a Go timer: millisecond granularity when the
// process is otherwise idle (see newWaker on Linux).
type goWaker struct {
	t *time.Timer
	c chan struct{}
}

func newGoWaker() waker {
	w := &goWaker{c: make(chan struct{}, 1)}
	w.t = time.AfterFunc(time.Hour, func() {
		select {
		case w.c <- struct{}{}:
		default:
		}
	})
	w.t.Stop()
	return w
}

func (w *goWaker) C() <-chan struct{} { return w.c }

func (w *goWaker) Reset(d time.Duration) { w.t.Reset(d) }

func (w *goWaker) Stop() { w.t.Stop() }

func (w *goWaker) Close() { w.t.Stop() }
