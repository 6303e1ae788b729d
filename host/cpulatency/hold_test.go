package cpulatency

import (
	"context"
	"testing"
	"time"
)

// TestHoldAfterLastRequest: node.toml and config.go promise that the
// limit "stays in force" for cpu_latency_hold after the last request. After a
// single request the Governor kept it for about two holds: the Touch that
// woke Run also left its mark, so the first look always continued.
func TestHoldAfterLastRequest(t *testing.T) {
	const hold = 200 * time.Millisecond
	g, path := fakeGovernor(t, hold)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Run(ctx)

	start := time.Now()
	g.Touch() // one request, then none
	var setAt, resetAt time.Duration
	for time.Since(start) < 5*hold {
		v, _ := current(t, path)
		if v == 0 && setAt == 0 {
			setAt = time.Since(start)
		}
		if v == noLimit && setAt != 0 {
			resetAt = time.Since(start)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if setAt == 0 || resetAt == 0 {
		t.Fatalf("set at %v, withdrawn at %v", setAt, resetAt)
	}
	if held := resetAt - setAt; held > hold*16/10 || held < hold*9/10 {
		t.Errorf("limit held %v after the only request, want about cpu_latency_hold (%v)", held.Round(time.Millisecond), hold)
	}
}

// TestTouchAtRelease: a request that arrives after Run's last quiet look
// but before it withdraws the limit keeps the limit for a hold. The
// Governor kept "seen" and "active" in two flags: such a Touch found the
// limit active and woke nobody, then Run withdrew it, and it stayed
// withdrawn (for that request and until the next one) although a request
// had just come.
func TestTouchAtRelease(t *testing.T) {
	const hold = 200 * time.Millisecond
	g, path := fakeGovernor(t, hold)
	touched := make(chan time.Time, 1)
	raced := false // Run's goroutine only
	g.testHookRelease = func() {
		if !raced { // once: the request that races the withdrawal
			raced = true
			touched <- time.Now()
			g.Touch()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	g.Touch()
	at := <-touched
	// The limit must stay a hold after the Touch at the release point.
	for time.Since(at) < hold*8/10 {
		if v, _ := current(t, path); v != 0 {
			t.Fatalf("%v after a request: limit %d, want 0 for cpu_latency_hold (%v)",
				time.Since(at).Round(time.Millisecond), v, hold)
		}
		time.Sleep(time.Millisecond)
	}
	// And then go.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if v, _ := current(t, path); v == noLimit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("limit never withdrawn after the last request")
		}
	}
	if held := time.Since(at); held > hold*16/10 {
		t.Errorf("limit held %v after the last request, want about %v", held.Round(time.Millisecond), hold)
	}
}
