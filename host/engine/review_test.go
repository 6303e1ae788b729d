package engine

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// A batch left waiting for its delay with one signature is not starved by a
// steady stream of another signature that keeps forming preferred-size
// prefixes in an older batch: once its delay is over it runs before newer
// requests, as Triton takes requests in the order they were received. The
// older batch kept its place at the head of the pending list after each
// preferred prefix left it, so the overdue batch behind it waited as long
// as the stream went on.
func TestOverdueBatchNotStarvedByPreferredPrefixes(t *testing.T) {
	noLeaks(t)
	const delay = time.Second
	m := &fakeModel{started: make(chan int, 16), release: make(chan struct{})}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, PreferredBatchSizes: []int{2}, MaxQueueDelay: delay})
	var chans []<-chan result
	// A full batch runs at once: the only instance is busy.
	chans = append(chans, goInfer(context.Background(), s, req(1, 8, 2)))
	<-m.started
	queued := 0
	queue := func(r Request) {
		chans = append(chans, goInfer(context.Background(), s, r))
		queued++
		eventually(t, "the request to be queued", func() bool { return s.Stats().Queued == queued })
	}
	next := func() int {
		m.release <- struct{}{}
		select {
		case rows := <-m.started:
			queued -= rows
			return rows
		case <-time.After(5 * time.Second):
			t.Fatal("no batch ran")
			return 0
		}
	}

	queue(req(2, 1, 2)) // signature A: its batch is the oldest
	bStart := time.Now()
	queue(req(3, 1, 3)) // signature B: a batch of its own
	queue(req(4, 1, 2))
	eventually(t, "half B's delay", func() bool { return time.Since(bStart) > delay/2 })
	queue(req(5, 1, 2))
	// A: 3 rows; its preferred prefix of 2 goes, request 5 stays.
	if rows := next(); rows != 2 || m.saw(5) {
		t.Fatalf("first batch after the blocker: %d rows", rows)
	}
	queue(req(6, 1, 2))
	queue(req(7, 1, 2)) // A: 3 rows again, its oldest well within the delay
	eventually(t, "B's delay", func() bool { return time.Since(bStart) > delay })
	next()
	if !m.saw(3) {
		t.Errorf("B, overdue, did not run before newer A requests: batches %v", m.rows())
	}
	close(m.release)
	for _, ch := range chans {
		if r := wait(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// With preferred sizes, a full (or sealed) batch goes out as its largest
// preferred prefix, as Triton documents: "If the dynamic batcher can form a
// batch of a preferred size(s) it will create a batch of the largest possible
// preferred size", with or without a queue delay. Eight one-row requests
// with preferred_batch_sizes [4] and max_batch_size 8 ran as one batch of 8.
func TestFullBatchRunsAsPreferredSize(t *testing.T) {
	for _, delay := range []time.Duration{time.Hour, 0} {
		t.Run(fmt.Sprint("delay ", delay), func(t *testing.T) {
			noLeaks(t)
			m := &fakeModel{started: make(chan int, 16), release: make(chan struct{})}
			s := newScheduler(t, m, Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4}, MaxQueueDelay: delay})
			var chans []<-chan result
			chans = append(chans, goInfer(context.Background(), s, req(1, 4, 2))) // preferred: runs at once
			<-m.started
			for i := range 8 {
				chans = append(chans, goInfer(context.Background(), s, req(10+i, 1, 2)))
				eventually(t, "the request to be queued", func() bool { return s.Stats().Queued == i+1 })
			}
			close(m.release)
			for _, ch := range chans {
				if r := wait(t, ch); r.err != nil {
					t.Fatal(r.err)
				}
			}
			if got := m.rows(); !slices.Equal(got, []int{4, 4, 4}) {
				t.Errorf("batches %v, want [4 4 4]", got)
			}
		})
	}
}

// A batch policy is asked again when a request joins the batch it told to
// wait: its answer depends on the queue it was shown. It was asked only
// when its wait ran out, so a policy that runs at 3 rows and otherwise
// waits for the bound held a batch of 3 until the bound, however soon the
// rows arrived.
func TestPolicyAskedAgainOnArrival(t *testing.T) {
	noLeaks(t)
	policy := func(_ context.Context, q QueueState) (Decision, error) {
		if q.Queued >= 3 {
			return Decision{Run: q.Queued}, nil
		}
		return Decision{Wait: time.Hour}, nil
	}
	m := &fakeModel{started: make(chan int, 4)}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, MaxQueueDelay: time.Minute, Policy: policy})
	var chans []<-chan result
	for i := range 3 {
		chans = append(chans, goInfer(context.Background(), s, req(i+1, 1, 2)))
		if i < 2 {
			eventually(t, "the request to be queued", func() bool { return s.Stats().Queued == i+1 })
		}
	}
	select {
	case rows := <-m.started:
		if rows != 3 {
			t.Fatalf("a batch of %d rows, want the policy's 3", rows)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the policy was not asked again when the third request arrived")
	}
	for _, ch := range chans {
		if r := wait(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// A batch policy that panics is a failed policy (the batch runs, the error
// is counted), as a model that panics fails its requests: it crashed the
// node from the batcher goroutine.
func TestPolicyPanicRunsTheBatch(t *testing.T) {
	noLeaks(t)
	policy := func(context.Context, QueueState) (Decision, error) { panic("policy: boom") }
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, MaxQueueDelay: time.Minute, Policy: policy})
	r := req(1, 1, 2)
	outs, err := s.Infer(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkOutputs(t, r, outs)
	if n := s.Stats().PolicyErrors; n != 1 {
		t.Errorf("PolicyErrors = %d, want 1", n)
	}
}

// A policy's Wait of 0 means "ask again when a request arrives" (as the
// guest runtime's Decision documents), not "ask again at once": the
// batcher asked it every 50 µs until the bound, a busy loop of guest calls.
func TestPolicyWaitZeroWaitsForArrival(t *testing.T) {
	noLeaks(t)
	var asked atomic.Int32
	policy := func(_ context.Context, q QueueState) (Decision, error) {
		asked.Add(1)
		if q.Queued >= 2 {
			return Decision{Run: q.Queued}, nil
		}
		return Decision{}, nil
	}
	m := &fakeModel{started: make(chan int, 4)}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, MaxQueueDelay: time.Minute, Policy: policy})
	first := goInfer(context.Background(), s, req(1, 1, 2))
	eventually(t, "the policy to be asked", func() bool { return asked.Load() >= 1 })
	time.Sleep(20 * time.Millisecond) // long enough for ~400 asks at 50 µs
	if n := asked.Load(); n != 1 {
		t.Errorf("policy asked %d times while nothing arrived, want 1", n)
	}
	second := goInfer(context.Background(), s, req(2, 1, 2))
	select {
	case rows := <-m.started:
		if rows != 2 {
			t.Fatalf("a batch of %d rows, want 2", rows)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the policy was not asked again when the second request arrived")
	}
	for _, ch := range []<-chan result{first, second} {
		if r := wait(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
}
