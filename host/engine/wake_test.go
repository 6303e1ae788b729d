package engine

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"
)

func testWaker(t *testing.T, w waker) {
	defer w.Close()
	// Fires once per arming; a zero or negative wait fires at once.
	for _, d := range []time.Duration{50 * time.Microsecond, 0, -time.Second, time.Millisecond} {
		w.Reset(d)
		select {
		case <-w.C():
		case <-time.After(5 * time.Second):
			t.Fatalf("Reset(%v) never fired", d)
		}
	}
	// Re-arming replaces the earlier arming: one signal at most comes
	// for both.
	w.Reset(time.Hour)
	w.Reset(100 * time.Microsecond)
	select {
	case <-w.C():
	case <-time.After(5 * time.Second):
		t.Fatal("the re-armed timer never fired")
	}
	// Stopped, it does not fire.
	w.Reset(2 * time.Millisecond)
	w.Stop()
	select {
	case <-w.C():
		t.Fatal("a stopped waker fired")
	case <-time.After(50 * time.Millisecond):
	}
	// Armed and never received: Close still returns (its goroutine ends).
	w.Reset(time.Microsecond)
	time.Sleep(time.Millisecond)
}

func TestWaker(t *testing.T) {
	t.Run("default", func(t *testing.T) { testWaker(t, newWaker()) })
	t.Run("go-timer", func(t *testing.T) { testWaker(t, newGoWaker()) })
}

// A batch waiting for its delay still runs when the waker is closed under
// it: Close runs what is pending without waiting, and the waker's goroutine
// ends (TestMain checks for leaks).
func TestCloseWhileBatchWaits(t *testing.T) {
	s, err := New("wait", trivialModel{}, Config{MaxBatchSize: 8, MaxQueueDelay: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := s.Infer(context.Background(), req(1, 1, 4))
		res <- err
	}()
	for s.queued.Load() == 0 {
		runtime.Gosched()
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("the waiting request: %v", err)
	}
}

// BenchmarkQueueDelay measures how long a lone request waits in the queue
// for a max_queue_delay of 100 µs to 2 ms (p50 of the engine's queue time),
// and, as the reference in the same run, how long a Go timer of the same
// duration takes on this otherwise idle process.
func BenchmarkQueueDelay(b *testing.B) {
	ctx := context.Background()
	var line string
	for _, d := range []time.Duration{100 * time.Microsecond, 200 * time.Microsecond, 500 * time.Microsecond, 2 * time.Millisecond} {
		s, err := New("delay", trivialModel{}, Config{MaxBatchSize: 8, MaxQueueDelay: d}, nil)
		if err != nil {
			b.Fatal(err)
		}
		r := req(1, 1, 4)
		var waited, timer []time.Duration
		for range 200 {
			q0 := s.Stats().QueueTime
			if _, err := s.Infer(ctx, r); err != nil {
				b.Fatal(err)
			}
			waited = append(waited, s.Stats().QueueTime-q0)
			t0 := time.Now()
			<-time.After(d)
			timer = append(timer, time.Since(t0))
		}
		if err := s.Close(ctx); err != nil {
			b.Fatal(err)
		}
		slices.Sort(waited)
		slices.Sort(timer)
		q, g := waited[len(waited)/2], timer[len(timer)/2]
		fmt.Printf("max_queue_delay %v: queue time p50 %v, p99 %v (a Go timer of %v: p50 %v)\n", d, q, waited[len(waited)*99/100], d, g)
		line += fmt.Sprintf(" delay%dus_p50_us=%d go_timer%dus_p50_us=%d", d.Microseconds(), q.Microseconds(), d.Microseconds(), g.Microseconds())
		b.ReportMetric(float64(q.Microseconds()), fmt.Sprintf("delay%dus_p50_us", d.Microseconds()))
	}
	fmt.Printf("bench-queue-delay:%s\n", line)
}
