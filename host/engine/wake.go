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

func newGoWaker() waker { return goWakerOn(make(chan struct{}, 1)) }

// goWakerOn is a goWaker signalling c (capacity 1).
func goWakerOn(c chan struct{}) *goWaker {
	w := &goWaker{c: c}
	w.t = time.AfterFunc(time.Hour, func() { signal(c) })
	w.t.Stop()
	return w
}

// signal sends one wake-up on c, unless one is pending already.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (w *goWaker) C() <-chan struct{} { return w.c }

func (w *goWaker) Reset(d time.Duration) { w.t.Reset(d) }

func (w *goWaker) Stop() { w.t.Stop() }

func (w *goWaker) Close() { w.t.Stop() }
