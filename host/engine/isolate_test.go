package engine

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// errValue stands for a model's refusal of one request's values (ONNX
// Runtime's "indices element out of data bounds" for a token id past an
// embedding table).
var errValue = errors.New("value out of range")

// poisonModel is fakeModel refusing any execution that holds a row of
// request id poison.
type poisonModel struct {
	fakeModel
	poison int
	calls  atomic.Int32
}

func (m *poisonModel) Infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error) {
	m.calls.Add(1)
	x := inputs[0]
	v := tensor.View[float32](x)
	for i := range x.Shape[0] {
		if int(v[i*x.Shape[1]])/100 == m.poison {
			return nil, fmt.Errorf("fake: row %d: %w", i, errValue)
		}
	}
	return m.fakeModel.Infer(ctx, inputs, outputs)
}

// One request whose values the model refuses fails alone when Isolate
// says the error may be a request's: the other requests of its batch run
// again one by one and get their own answers. Without Isolate the batch's
// error fails them all (one bad client failed everyone batched with it).
func TestIsolateFailsOnlyTheRequestAtFault(t *testing.T) {
	noLeaks(t)
	for _, isolate := range []bool{true, false} {
		t.Run(fmt.Sprintf("isolate=%v", isolate), func(t *testing.T) {
			m := &poisonModel{poison: 2}
			cfg := batchOf4
			if isolate {
				cfg.Isolate = func(err error) bool { return errors.Is(err, errValue) }
			}
			s := newScheduler(t, m, cfg)
			var chans []<-chan result
			var sent []Request
			for id := range 4 {
				r := req(id, 1, 3)
				sent = append(sent, r)
				chans = append(chans, goInfer(context.Background(), s, r))
			}
			for id, ch := range chans {
				res := wait(t, ch)
				switch {
				case id == m.poison || !isolate:
					if !errors.Is(res.err, errValue) {
						t.Errorf("request %d: err %v, want the model's refusal", id, res.err)
					}
				case res.err != nil:
					t.Errorf("request %d failed with request %d's error: %v", id, m.poison, res.err)
				default:
					checkOutputs(t, sent[id], res.outs)
				}
			}
			st := s.Stats()
			wantCalls, wantFail := int32(1), uint64(4)
			if isolate {
				wantCalls, wantFail = 5, 1 // the batch, then each request alone
			}
			if got := m.calls.Load(); got != wantCalls {
				t.Errorf("model called %d times, want %d", got, wantCalls)
			}
			if st.Failures != wantFail || st.Executions != uint64(wantCalls) {
				t.Errorf("stats: %d failures, %d executions; want %d, %d", st.Failures, st.Executions, wantFail, wantCalls)
			}
		})
	}
}

// An error that is not a request's (the model broke) is not retried.
func TestIsolateLeavesOtherErrors(t *testing.T) {
	noLeaks(t)
	m := &poisonModel{poison: -1}
	m.err = errors.New("device lost")
	cfg := batchOf4
	cfg.Isolate = func(err error) bool { return errors.Is(err, errValue) }
	s := newScheduler(t, m, cfg)
	var chans []<-chan result
	for id := range 4 {
		chans = append(chans, goInfer(context.Background(), s, req(id, 1, 3)))
	}
	for id, ch := range chans {
		if res := wait(t, ch); !errors.Is(res.err, m.err) {
			t.Errorf("request %d: err %v, want the model's", id, res.err)
		}
	}
	if got := m.calls.Load(); got != 1 {
		t.Errorf("model called %d times, want 1 (no retry)", got)
	}
}
