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
// or when the caller's context ends, and costs no allocation per call when
// the caller's context cannot be cancelled (one AfterFunc when it can).
// context.WithTimeout + context.WithValue per call cost about a third of an
// empty call.
//
// wazero watches Done (WithCloseOnContextDone) and closes the module when
// it closes; host functions find the session with Value and pass the
// context on to models they run.
type callCtx struct {
	base    context.Context // carries the session only
	timer   *time.Timer     // runs expire at the deadline
	onStop  func()          // cancelFromParent as a func value, made once
	stopAft func() bool     // unregisters cancelFromParent for this call

	mu       sync.Mutex
	parent   context.Context // the caller's context during a call; nil between calls
	deadline time.Time
	done     chan struct{}
	err      error // set when done is closed
}

func newCallCtx(sess *cyxwiz.Session) *callCtx {
	c := &callCtx{base: cyxwiz.WithSession(context.Background(), sess), done: make(chan struct{})}
	c.timer = time.AfterFunc(time.Hour, c.expire)
	c.timer.Stop()
	c.onStop = c.cancelFromParent
	return c
}

// begin starts a call under parent that may last timeout.
func (c *callCtx) begin(parent context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
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
	c.timer.Reset(time.Until(deadline))
	if parent.Done() != nil {
		c.stopAft = context.AfterFunc(parent, c.onStop)
	}
}

// end ends the call. A timer or AfterFunc that fires late finds the call
// over (or another one running that is not due) and does nothing.
func (c *callCtx) end() {
	c.timer.Stop()
	if c.stopAft != nil {
		c.stopAft()
		c.stopAft = nil
	}
	c.mu.Lock()
	c.parent = nil
	c.mu.Unlock()
}

// close stops the timer for good.
func (c *callCtx) close() { c.timer.Stop() }

// expire and cancelFromParent check that the event is meant for the call
// in progress and end it in one critical section: one that fires late,
// when its call is over and another has begun, finds the new call not due
// (or its caller not done) and does nothing.
func (c *callCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parent != nil && !time.Now().Before(c.deadline) {
		c.fireLocked(context.DeadlineExceeded)
	}
}

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
