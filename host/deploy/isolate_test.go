package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A deployment's batch that the model refuses because of one request's
// values (loaders.ErrInvalidInput: a token id past an embedding table)
// fails that request alone: the others batched with it get their answers.
// Before, one bad client's request failed every request in its batch with
// InvalidArgument.
func TestBatchFailsOnlyTheBadRequest(t *testing.T) {
	srv := artifacttest.New(t)
	c, err := artifact.New(filepath.Join(t.TempDir(), "artifacts"), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := &strictLoader{}
	m := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(l), c, nil, slog.New(slog.DiscardHandler))
	defer m.Close(context.Background())
	spec := deploy.Spec{Name: "s", Format: "strict", Model: srv.Add("/s", []byte("model")),
		Batching: engine.Config{MaxBatchSize: 4, PreferredBatchSizes: []int{4}, MaxQueueDelay: time.Hour, Instances: 1}}
	if _, err := m.Assign("s", spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, m, "s", deploy.Ready)
	d, err := m.Model("s", "")
	if err != nil {
		t.Fatal(err)
	}
	values := []float32{1, 2, -3, 4} // -3 is refused
	errs := make([]error, len(values))
	outs := make([][]*tensor.Tensor, len(values))
	var wg sync.WaitGroup
	for i, v := range values {
		wg.Go(func() {
			x := tensor.FromSlice("x", tensor.FP32, []int64{1}, []float32{v})
			outs[i], errs[i] = d.Infer(context.Background(), []*tensor.Tensor{x}, nil)
		})
	}
	wg.Wait()
	if got := l.batches(); len(got) == 0 || got[0] != 4 {
		t.Fatalf("executions' rows %v: the four requests did not batch", got)
	}
	for i, v := range values {
		switch {
		case v < 0:
			if !errors.Is(errs[i], loaders.ErrInvalidInput) {
				t.Errorf("bad request: err %v, want ErrInvalidInput", errs[i])
			}
		case errs[i] != nil:
			t.Errorf("request %v failed with the bad request's error: %v", v, errs[i])
		default:
			if y := tensor.View[float32](outs[i][0]); len(y) != 1 || y[0] != 2*v {
				t.Errorf("request %v: y %v, want [%v]", v, y, 2*v)
			}
		}
	}
}

// strictLoader loads a model that doubles x and refuses negative values as
// the request's fault.
type strictLoader struct {
	mu   sync.Mutex
	rows []int64
}

func (*strictLoader) Format() string   { return "strict" }
func (*strictLoader) Available() error { return nil }
func (l *strictLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return strictModel{l}, nil
}

func (l *strictLoader) batches() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.rows...)
}

type strictModel struct{ l *strictLoader }

func (strictModel) Info() loaders.Info {
	return loaders.Info{Format: "strict", Inputs: []loaders.TensorSpec{{Name: "x", DType: tensor.FP32, Shape: []int64{-1}}},
		Outputs: []loaders.TensorSpec{{Name: "y", DType: tensor.FP32, Shape: []int64{-1}}}}
}

func (m strictModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	m.l.mu.Lock()
	m.l.rows = append(m.l.rows, in[0].Shape[0])
	m.l.mu.Unlock()
	x := tensor.View[float32](in[0])
	y := make([]float32, len(x))
	for i, v := range x {
		if v < 0 {
			return nil, fmt.Errorf("strict: %w: x[%d] = %v is negative", loaders.ErrInvalidInput, i, v)
		}
		y[i] = 2 * v
	}
	return []*tensor.Tensor{tensor.FromSlice("y", tensor.FP32, []int64{int64(len(y))}, y)}, nil
}

func (strictModel) Close() error { return nil }
