package deploy

import (
	"runtime"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// An idle watcher (a watch stream whose deployments do not change) holds
// little: each held a channel of watcherBuffer events (745 KB), so one
// client connection's 256 watch streams held 190 MB of the node's memory.
func TestWatcherIdleHoldsLittle(t *testing.T) {
	m := NewManager(Config{}, loaders.NewRegistry(), nil, nil, nil)
	defer m.Close(t.Context())
	const n = 200
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	ws := make([]*Watcher, n)
	for i := range ws {
		ws[i] = m.Watch(nil, false)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	per := (int64(ms.HeapAlloc) - int64(before)) / n
	for _, w := range ws {
		w.Close()
	}
	if per > 64<<10 {
		t.Errorf("an idle watcher holds %d bytes, want at most 64 KiB", per)
	}
}

// A watcher that falls behind by more than its channel holds, but less than
// watcherBuffer, gets every event in order; one that falls further behind
// gets what was buffered, then its channel closes, Overflowed; Close ends
// a watcher whose queue is still being delivered (goleak checks that the
// goroutine moving it is gone).
func TestWatcherLagAndOverflow(t *testing.T) {
	m := NewManager(Config{}, loaders.NewRegistry(), nil, nil, nil)
	defer m.Close(t.Context())
	publish := func(n int) {
		for i := range n {
			m.watch.publish(Event{Status: Status{ID: "d", Seq: uint64(i + 1)}})
		}
	}

	lag := m.Watch(nil, false)
	publish(watcherBuffer / 2)
	for i := range watcherBuffer / 2 {
		e, ok := <-lag.C
		if !ok || e.Status.Seq != uint64(i+1) {
			t.Fatalf("event %d: %v (open %v), want seq %d", i, e.Status.Seq, ok, i+1)
		}
	}
	if lag.Overflowed() {
		t.Error("a watcher within its buffer overflowed")
	}
	publish(1) // straight into its channel again
	if e := <-lag.C; e.Status.Seq != 1 {
		t.Errorf("after catching up: seq %d, want 1", e.Status.Seq)
	}
	lag.Close()
	if _, ok := <-lag.C; ok {
		t.Error("C open after Close")
	}

	slow := m.Watch(nil, false)
	pending := m.Watch(nil, false)
	publish(2 * watcherBuffer)
	if !slow.Overflowed() || pending.Overflowed() != slow.Overflowed() {
		t.Fatalf("overflowed: %v, %v", slow.Overflowed(), pending.Overflowed())
	}
	got := 0
	for e := range slow.C {
		if got++; e.Status.Seq != uint64(got) {
			t.Fatalf("buffered event %d has seq %d", got, e.Status.Seq)
		}
	}
	if got < watcherBuffer || got > watcherBuffer+2 {
		t.Errorf("%d buffered events delivered, want about %d", got, watcherBuffer)
	}
	slow.Close()
	pending.Close() // its queue undelivered
	for range pending.C {
	}

	// Closing the node's watches leaves what was published readable,
	// then C closes.
	last := m.Watch(nil, false)
	publish(watcherBuffer / 2)
	m.StopWatches()
	got = 0
	for range last.C {
		got++
	}
	if got != watcherBuffer/2 || last.Overflowed() {
		t.Errorf("after StopWatches: %d events read, overflowed %v, want %d", got, last.Overflowed(), watcherBuffer/2)
	}
	last.Close()
}
