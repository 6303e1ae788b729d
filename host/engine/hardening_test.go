package engine

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"
	"weak"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Requests whose callers gave up while every instance was busy do not
// turn live ones away, however many there were. Without batching they
// stayed in the request channel (twice the capacity) until a worker
// reached them, and once they filled it every new request failed with
// ErrQueueFull although none was queued.
func TestManyAbandonedRequestsDoNotFillTheQueue(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			m := &fakeModel{started: make(chan int, 8), release: make(chan struct{})}
			cfg := mode.cfg
			cfg.QueueCapacity = 2
			s := newScheduler(t, m, cfg)
			defer close(m.release)
			running := goInfer(context.Background(), s, req(1, 1, 2))
			<-m.started // the only instance is busy
			for i := range 4 * cfg.QueueCapacity {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
				r := wait(t, goInfer(ctx, s, req(2+i, 1, 2)))
				cancel()
				if !errors.Is(r.err, context.DeadlineExceeded) {
					t.Fatalf("abandoned request %d: %v, want DeadlineExceeded", i, r.err)
				}
			}
			if q := s.Stats().Queued; q != 0 {
				t.Errorf("Stats.Queued = %d with only abandoned requests", q)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if _, err := s.Infer(ctx, req(99, 1, 2)); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("live request after %d abandoned ones: %v, want DeadlineExceeded (queued behind the busy instance)", 4*cfg.QueueCapacity, err)
			}
			_ = running
		})
	}
}

// Requests whose callers gave up while every instance was busy do not
// stay in memory: the batcher kept them (and their inputs) in its pending
// batches until an instance came free to look at those batches, so
// callers with short deadlines could grow the queue's memory without
// bound while QueueCapacity held only the live requests.
func TestAbandonedRequestsAreFreedWhileInstancesBusy(t *testing.T) {
	const abandoned = 200
	m := &fakeModel{started: make(chan int, 8), release: make(chan struct{})}
	s := newScheduler(t, m, Config{MaxBatchSize: 4, QueueCapacity: 4})
	defer close(m.release)
	running := goInfer(context.Background(), s, req(1, 1, 2))
	<-m.started // the only instance is busy
	ptrs := make([]weak.Pointer[tensor.Tensor], abandoned)
	for i := range abandoned {
		in := input(2+i, 1, 2)
		ptrs[i] = weak.Make(in)
		ctx, cancel := context.WithCancel(context.Background())
		ch := goInfer(ctx, s, Request{Inputs: []*tensor.Tensor{in}})
		eventually(t, "the request to be queued", func() bool { return s.Stats().Queued == 1 })
		cancel()
		if r := wait(t, ch); !errors.Is(r.err, context.Canceled) {
			t.Fatalf("abandoned request %d: %v", i, r.err)
		}
	}
	var alive int
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		alive = 0
		for _, p := range ptrs {
			if p.Value() != nil {
				alive++
			}
		}
		if alive <= 16 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if alive > 16 {
		t.Errorf("%d of %d abandoned requests' inputs still held while the instance is busy (queue capacity 4)", alive, abandoned)
	}
	_ = running
}

// Without batching, MaxQueueDelay and a Policy mean nothing (a request
// waits for no company), so an idle instance runs a request on its
// caller's goroutine as it does with neither. They turned the inline path
// off: a deployment with batching off (max_batch_size 1, or a model
// without a batch dimension) that kept node.toml's max_queue_delay or a
// batch-policy guest paid two goroutine hand-offs on every request.
func TestNoBatchingRunsInlineWhateverTheDelay(t *testing.T) {
	policy := func(context.Context, QueueState) (Decision, error) { return Decision{Run: 1}, nil }
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"queue delay", Config{MaxQueueDelay: time.Millisecond}},
		{"max batch 1 and queue delay", Config{MaxBatchSize: 1, MaxQueueDelay: time.Millisecond}},
		{"policy", Config{Policy: policy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeModel{}
			s := newScheduler(t, m, tc.cfg)
			for i := range 3 {
				if _, err := s.Infer(context.Background(), req(i, 1, 2)); err != nil {
					t.Fatal(err)
				}
			}
			m.mu.Lock()
			got := slices.Clone(m.inline)
			m.mu.Unlock()
			if want := []bool{true, true, true}; !slices.Equal(got, want) {
				t.Errorf("ran inline: %v, want %v", got, want)
			}
		})
	}
}
