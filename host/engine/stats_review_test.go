package engine

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// stepModel runs each request as its context says (see the step keys).
type stepModel struct{}

type (
	holdKey   struct{} // chan struct{}: block until it is closed
	cancelKey struct{} // context.CancelFunc: end the caller's context, then fail
	startKey  struct{} // chan struct{}: close it and succeed
)

var errTerminated = errors.New("run terminated")

func (stepModel) Infer(ctx context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	if c, ok := ctx.Value(holdKey{}).(chan struct{}); ok {
		<-c
	}
	if cancel, ok := ctx.Value(cancelKey{}).(context.CancelFunc); ok {
		cancel() // the run is terminated because its caller went away
		return nil, errTerminated
	}
	if c, ok := ctx.Value(startKey{}).(chan struct{}); ok {
		close(c)
	}
	return in, nil
}

// gateCtx is a context whose first Done call waits for gate: Infer calls
// it when it starts waiting for its result, so the test can have the result
// delivered (and the context ended) before Infer looks.
type gateCtx struct {
	context.Context
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (c *gateCtx) Done() <-chan struct{} {
	c.once.Do(func() {
		close(c.entered)
		<-c.gate
	})
	return c.Context.Done()
}

// A call whose context ends while its run fails (ONNX Runtime terminating
// the run of a caller that went away) ended as a cancellation or as a
// failure by the toss of a select: when the result was delivered before
// Infer looked, it counted a failure and returned the model's error. It is
// a cancellation, as for a request run inline.
func TestRunEndedByItsContextCountsAsCancelled(t *testing.T) {
	s := newScheduler(t, stepModel{}, Config{})
	for i := range 16 {
		hold := make(chan struct{})
		held := goInfer(context.WithValue(context.Background(), holdKey{}, hold), s, req(1, 1, 2))
		eventually(t, "the instance taken", func() bool { return len(s.slots) == 0 })

		inner, cancel := context.WithCancel(context.Background())
		defer cancel()
		a := &gateCtx{Context: context.WithValue(inner, cancelKey{}, cancel), entered: make(chan struct{}), gate: make(chan struct{})}
		gone := goInfer(a, s, req(2, 1, 2))
		<-a.entered // queued, and about to wait
		started := make(chan struct{})
		after := goInfer(context.WithValue(context.Background(), startKey{}, started), s, req(3, 1, 2))
		eventually(t, "both requests queued", func() bool { return s.Stats().Queued == 2 })

		before := s.Stats()
		close(hold)
		<-started // the worker ran the next request: a's result is delivered
		close(a.gate)
		r := wait(t, gone)
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("round %d: err = %v, want context.Canceled", i, r.err)
		}
		for _, ch := range []<-chan result{held, after} {
			if r := wait(t, ch); r.err != nil {
				t.Fatal(r.err)
			}
		}
		st := s.Stats()
		if st.Cancelled-before.Cancelled != 1 || st.Failures != before.Failures {
			t.Fatalf("round %d: %d cancelled, %d failed, want 1 cancelled, 0 failed", i, st.Cancelled-before.Cancelled, st.Failures-before.Failures)
		}
	}
}
