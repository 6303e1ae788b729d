package engine

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

type idKey struct{}

// valuesModel is fakeModel recording, per call, the idKey value and the
// error of its context.
type valuesModel struct {
	fakeModel
	mu   sync.Mutex
	vals []any
	errs []error
}

func (m *valuesModel) Infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error) {
	m.mu.Lock()
	m.vals, m.errs = append(m.vals, ctx.Value(idKey{})), append(m.errs, ctx.Err())
	m.mu.Unlock()
	return m.fakeModel.Infer(ctx, inputs, outputs)
}

// A batch, and a Policy deciding about it, ran under the scheduler's
// context alone: a value its requests' callers had set for the model (the
// call chain a deployment's guests must not call back into) was lost.
// Config.BatchValues gives them the values it makes of the requests'
// contexts, and the call still runs under the scheduler's cancellation,
// not the returned context's.
func TestBatchValuesReachModelAndPolicy(t *testing.T) {
	noLeaks(t)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	join := func(ctxs []context.Context) context.Context {
		var ids []int
		for _, ctx := range ctxs {
			ids = append(ids, ctx.Value(idKey{}).(int))
		}
		slices.Sort(ids)
		return context.WithValue(gone, idKey{}, fmt.Sprint(ids))
	}
	var (
		mu     sync.Mutex
		policy []any
	)
	cfg := Config{MaxBatchSize: 4, MaxQueueDelay: time.Hour, BatchValues: join,
		Policy: func(ctx context.Context, q QueueState) (Decision, error) {
			mu.Lock()
			policy = append(policy, ctx.Value(idKey{}))
			mu.Unlock()
			if err := ctx.Err(); err != nil {
				return Decision{}, err
			}
			if q.Queued < 4 {
				return Decision{}, nil // wait for the next
			}
			return Decision{Run: q.Queued}, nil
		}}
	m := &valuesModel{}
	s := newScheduler(t, m, cfg)
	var chans []<-chan result
	for id := range 4 {
		ctx := context.WithValue(context.Background(), idKey{}, id)
		chans = append(chans, goInfer(ctx, s, req(id, 1, 3)))
	}
	for _, ch := range chans {
		if res := wait(t, ch); res.err != nil {
			t.Fatal(res.err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if want := "[0 1 2 3]"; len(m.vals) != 1 || m.vals[0] != want || m.errs[0] != nil {
		t.Errorf("model calls saw %v (ctx errors %v), want one batch seeing %q, not cancelled", m.vals, m.errs, want)
	}
	mu.Lock()
	defer mu.Unlock()
	// The batch is full with its fourth request: it runs unasked.
	if len(policy) == 0 || slices.Contains(policy, nil) {
		t.Errorf("policy calls saw %v, want each to see the ids of the pending requests", policy)
	}
}
