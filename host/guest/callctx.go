package guest

import (
	"context"
	"sync"
	"time"

	"github.com/tetratelabs/wazero/sys"

	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
)

// callCtx is the context of an instance's guest calls, reused from call to
// call: it carries the instance's host session, ends at the call's deadline
// or when the caller's context ends, and costs no allocation for a call
// that returns within watchAfter. context.WithTimeout + context.WithValue
// per call cost about a third of an empty call, and context.AfterFunc on
// the caller's context another quarter.
//
// One timer per instance does both jobs: armed at watchAfter (or the
// deadline, if sooner), it then starts watching the caller's context with
// AfterFunc and re-arms itself for the deadline. A caller that goes away
// thus stops a long call at most watchAfter late; most calls are over
// before anything is registered.
//
// wazero watches Done (WithCloseOnContextDone) and closes the module when
// it closes; host functions find the session with Value and pass the
// context on to models they run.
type callCtx struct {
	base   context.Context // carries the session only
	timer  *time.Timer     // runs tick
	onStop func()          // cancelFromParent as a func value, made once

	mu       sync.Mutex
	parent   context.Context // the caller's context during a call; nil between calls
	deadline time.Time
	stopAft  func() bool // unregisters cancelFromParent, once tick registered it
	done     chan struct{}
	err      error // set when done is closed
}

// watchAfter is how long a call runs before its caller's context is
// watched.
const watchAfter = 200 * time.Microsecond

func newCallCtx(sess *cyxwiz.Session) *callCtx {
	c := &callCtx{base: cyxwiz.WithSession(context.Background(), sess), done: make(chan struct{})}
	c.timer = time.AfterFunc(time.Hour, c.tick)
	c.timer.Stop()
	c.onStop = c.cancelFromParent
	return c
}

// begin starts a call under parent that may last timeout.
func (c *callCtx) begin(parent context.Context, timeout time.Duration) {
	now := time.Now()
	deadline := now.Add(timeout)
	if d, ok := parent.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.mu.Lock()
	if c.err != nil { // the last call ended by its deadline or its caller
		c.done, c.err = make(chan struct{}), nil
	}
	c.parent, c.deadline = parent, deadline
	c.mu.Unlock()
	if err := parent.Err(); err != nil {
		c.fire(err)
		return
	}
	c.timer.Reset(min(deadline.Sub(now), watchAfter))
}

// end ends the call. A timer or AfterFunc that fires late finds the call
// over (or another one running that is not due) and does nothing.
func (c *callCtx) end() {
	c.timer.Stop()
	c.mu.Lock()
	stop := c.stopAft
	c.parent, c.stopAft = nil, nil
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// close stops the timer for good.
func (c *callCtx) close() { c.timer.Stop() }

// tick runs when the call has lasted watchAfter, and at its deadline.
func (c *callCtx) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parent == nil || c.err != nil {
		return // the call is over (a late tick), or already ended
	}
	left := time.Until(c.deadline)
	if left <= 0 {
		c.fireLocked(context.DeadlineExceeded)
		return
	}
	if c.stopAft == nil && c.parent.Done() != nil {
		// cancelFromParent takes c.mu, but AfterFunc runs it in a goroutine
		// of its own: no deadlock even when parent is already done.
		c.stopAft = context.AfterFunc(c.parent, c.onStop)
	}
	c.timer.Reset(left)
}

// tick and cancelFromParent check that the event is meant for the call in
// progress and end it in one critical section: one that fires late, when
// its call is over and another has begun, finds the new call not due (or
// its caller not done) and does nothing.
func (c *callCtx) cancelFromParent() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parent == nil {
		return
	}
	if err := c.parent.Err(); err != nil {
		c.fireLocked(err)
	}
}

func (c *callCtx) fire(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fireLocked(err)
}

func (c *callCtx) fireLocked(err error) {
	if c.err == nil {
		c.err = err
		close(c.done)
	}
}

func (c *callCtx) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadline, !c.deadline.IsZero()
}

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Value finds the session first, then what the caller's context carries.
func (c *callCtx) Value(key any) any {
	if v := c.base.Value(key); v != nil {
		return v
	}
	c.mu.Lock()
	p := c.parent
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Value(key)
}

var _ context.Context = (*callCtx)(nil)

// The clocks of a guest without PreciseClock: real time, in whole
// milliseconds.
const coarseResolution = sys.ClockResolution(time.Millisecond)

var clockStart = time.Now()

func coarseWalltime() (sec int64, nsec int32) {
	now := time.Now()
	return now.Unix(), int32(now.Nanosecond() / 1e6 * 1e6)
}

func coarseNanotime() int64 {
	return int64(time.Since(clockStart).Truncate(time.Millisecond))
}
