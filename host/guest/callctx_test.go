package guest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
)

type ctxKey struct{}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestCallCtxDeadline(t *testing.T) {
	c := newCallCtx(cyxwiz.NewSession(cyxwiz.Env{}))
	defer c.close()
	c.begin(context.Background(), 5*time.Millisecond)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("call did not end at its deadline")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", c.Err())
	}
	c.end()
	// The next call starts afresh.
	c.begin(context.Background(), time.Hour)
	if closed(c.Done()) || c.Err() != nil {
		t.Fatal("a call began already ended")
	}
	c.end()
}

func TestCallCtxCallerEnds(t *testing.T) {
	c := newCallCtx(cyxwiz.NewSession(cyxwiz.Env{}))
	defer c.close()
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	c.begin(parent, time.Hour)
	if c.Value(ctxKey{}) != "v" {
		t.Fatal("the caller's values are not visible during the call")
	}
	cancel()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("call did not end with its caller")
	}
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v", c.Err())
	}
	c.end()

	// A caller already done ends the call at once; a caller deadline
	// earlier than the timeout is the call's deadline.
	c.begin(parent, time.Hour)
	if !closed(c.Done()) {
		t.Fatal("call under a cancelled caller is not done")
	}
	c.end()
	short, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	c.begin(short, time.Hour)
	if d, ok := c.Deadline(); !ok || time.Until(d) > time.Minute {
		t.Fatalf("deadline %v, want the caller's", d)
	}
	c.end()
}

// Timers and caller cancellations of finished calls do not reach the next
// call on the same context.
func TestCallCtxStaleEvents(t *testing.T) {
	c := newCallCtx(cyxwiz.NewSession(cyxwiz.Env{}))
	defer c.close()
	first, cancel := context.WithCancel(context.Background())
	c.begin(first, time.Millisecond)
	c.end()
	c.tick() // as a timer that had already started when end stopped it
	cancel()
	c.cancelFromParent()
	c.begin(context.Background(), time.Hour)
	time.Sleep(5 * time.Millisecond)
	c.tick() // early: the call's deadline is an hour away
	if closed(c.Done()) || c.Err() != nil {
		t.Fatalf("stale event ended a new call: %v", c.Err())
	}
	if c.Value(ctxKey{}) != nil {
		t.Fatal("value from nowhere")
	}
	c.end()
}

func TestCallCtxCarriesSession(t *testing.T) {
	s := cyxwiz.NewSession(cyxwiz.Env{})
	c := newCallCtx(s)
	defer c.close()
	c.begin(context.Background(), time.Hour)
	defer c.end()
	if cyxwiz.SessionFrom(c) != s {
		t.Fatal("the call context does not carry the instance's session")
	}
}

// An event that started while its call was running but reaches the
// context only after the next call began does not end the next call.
func TestCallCtxEventRacingNextCall(t *testing.T) {
	c := newCallCtx(cyxwiz.NewSession(cyxwiz.Env{}))
	defer c.close()
	first, cancel := context.WithCancel(context.Background())
	c.begin(first, time.Hour)
	c.end()
	cancel() // call 1's caller goes away after call 1 ended...
	c.begin(context.Background(), time.Hour)
	c.cancelFromParent() // ...and its AfterFunc lands during call 2
	c.tick()             // as does a timer of call 1
	if closed(c.Done()) {
		t.Fatalf("call 2 ended by call 1's events: %v", c.Err())
	}
	c.end()
}
