package engine

import (
	"context"
	"slices"
	"testing"
	"time"
)

// A batch of a preferred size is not shared out among idle instances
// (preferred_batch_sizes {4} ran as 2+2, {8} = max as 4+4): a model tuned
// or built for those sizes (static-shape engines, a profile per size) must
// get them.
func TestPreferredBatchNotSplit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		preferred []int
		n         int
	}{
		{"preferred 4 of max 8", []int{4}, 4},
		{"preferred 8 = max", []int{8}, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			m := &fakeModel{started: make(chan int, 16), release: make(chan struct{})}
			s := newScheduler(t, m, Config{MaxBatchSize: 8, PreferredBatchSizes: tc.preferred, MaxQueueDelay: time.Hour, Instances: 2})
			var chans []<-chan result
			for i := range tc.n {
				chans = append(chans, goInfer(context.Background(), s, req(i+1, 1, 2)))
			}
			var first int
			select {
			case first = <-m.started:
			case <-time.After(5 * time.Second):
				t.Fatal("no batch ran")
			}
			close(m.release)
			for _, ch := range chans {
				if r := wait(t, ch); r.err != nil {
					t.Fatal(r.err)
				}
			}
			got := m.rows()
			t.Logf("preferred %v, %d one-row requests: batches %v", tc.preferred, tc.n, got)
			if first != tc.n || !slices.Contains(tc.preferred, first) {
				t.Fatalf("a batch of the preferred size %d ran as %v: split into sizes that are not preferred", tc.n, got)
			}
		})
	}
}
