package engine

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

// Sizes come from the network (a deployment spec): one that would make the
// scheduler allocate gigabytes is refused, not attempted.
func TestConfigUpperBounds(t *testing.T) {
	for _, cfg := range []Config{
		{QueueCapacity: math.MaxUint32},
		{MaxBatchSize: math.MaxUint32},
		{Instances: math.MaxUint32},
	} {
		if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", cfg, err)
		}
		if s, err := New("big", &fakeModel{}, cfg, nil); err == nil {
			closeNow(t, s)
			t.Errorf("%+v: New accepted it", cfg)
		}
	}
}

// Requests whose callers gave up leave the queue's count at once: a queue
// of abandoned requests does not turn live ones away.
func TestAbandonedRequestsFreeTheQueue(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			m := &fakeModel{started: make(chan int, 8), release: make(chan struct{})}
			cfg := mode.cfg
			cfg.QueueCapacity = 2
			s := newScheduler(t, m, cfg)
			defer close(m.release)
			running := goInfer(context.Background(), s, req(1, 1, 2))
			<-m.started
			if cfg.Instances > 1 { // occupy every instance
				for i := 1; i < cfg.Instances; i++ {
					goInfer(context.Background(), s, req(10+i, 1, 2))
					<-m.started
				}
			}
			for i := range 2 {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				if r := wait(t, goInfer(ctx, s, req(2+i, 1, 2))); !errors.Is(r.err, context.DeadlineExceeded) {
					t.Fatalf("abandoned request %d: %v", i, r.err)
				}
				cancel()
			}
			if q := s.Stats().Queued; q != 0 {
				t.Errorf("Stats.Queued = %d with only abandoned requests", q)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if _, err := s.Infer(ctx, req(9, 1, 2)); errors.Is(err, ErrQueueFull) {
				t.Errorf("live request after two abandoned ones: %v", err)
			}
			_ = running
		})
	}
}

// When Close gives up on a running batch, its callers learn that the
// deployment closed (Unavailable), not that they cancelled (they did not).
func TestCloseGivingUpFailsBatchWithErrClosed(t *testing.T) {
	m := &fakeModel{started: make(chan int, 4), release: make(chan struct{})}
	s, err := New("x", m, Config{MaxBatchSize: 2, PreferredBatchSizes: []int{2}, MaxQueueDelay: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer close(m.release)
	a, b := goInfer(context.Background(), s, req(1, 1, 2)), goInfer(context.Background(), s, req(2, 1, 2))
	<-m.started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	s.Close(ctx)
	for _, ch := range []<-chan result{a, b} {
		if r := wait(t, ch); !errors.Is(r.err, ErrClosed) || errors.Is(r.err, context.Canceled) {
			t.Errorf("caller of the abandoned batch: %v, want ErrClosed", r.err)
		}
	}
}
