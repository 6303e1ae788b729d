package cpulatency

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

// TestHoldAfterLastRequest: node.toml and config.go promise that the
// limit "stays in force" for cpu_latency_hold after the last request. After a
// single request the Governor keeps it for about two holds: the Touch that
// woke Run also left seen=true, so the first tick always continues.
func TestHoldAfterLastRequest(t *testing.T) {
	path := fakeDevice(t)
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const hold = 200 * time.Millisecond
	g := NewGovernor(r, 0, hold, slog.New(slog.NewTextHandler(io.Discard, nil)))
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
