package engine

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// A request waiting for company (a delay of an hour, a preferred size it
// cannot reach) runs at once after Flush, and so do later ones: the node is
// draining, and it would have failed unrun when the drain ran out.
func TestFlushRunsWaitingBatches(t *testing.T) {
	for _, cfg := range []Config{
		{MaxBatchSize: 8, MaxQueueDelay: time.Hour},
		{MaxBatchSize: 8, PreferredBatchSizes: []int{8}, MaxQueueDelay: time.Hour},
		{MaxBatchSize: 8, MaxQueueDelay: time.Hour, Policy: func(context.Context, QueueState) (Decision, error) {
			return Decision{Wait: time.Hour}, nil
		}},
	} {
		s, err := New("flush", trivialModel{}, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := make(chan error, 2)
		infer := func() {
			_, err := s.Infer(context.Background(), req(1, 1, 4))
			res <- err
		}
		go infer()
		for s.queued.Load() == 0 {
			runtime.Gosched()
		}
		s.Flush()
		select {
		case err := <-res:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%+v: the waiting request did not run after Flush", cfg)
		}
		go infer() // after Flush: no wait either
		select {
		case err := <-res:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%+v: a request after Flush waited", cfg)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
