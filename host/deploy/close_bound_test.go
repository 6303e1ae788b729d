package deploy_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Close returns when its context ends, even while a stopped deployment's
// model is still running a request and, like ONNX Runtime's, closes only
// once that run is over: it waited without bound, so a node's shutdown
// hung on one slow run.
func TestCloseBoundedByContext(t *testing.T) {
	srv := artifacttest.New(t)
	c, err := artifact.New(filepath.Join(t.TempDir(), "artifacts"), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := &gatedLoader{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	release := sync.OnceFunc(func() { close(l.gate) })
	defer release()
	m := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(l), c, nil, slog.New(slog.DiscardHandler))
	spec := deploy.Spec{Name: "a", Format: "gated", Model: srv.Add("/a", []byte("model"))}
	if _, err := m.Assign("a", spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, m, "a", deploy.Ready)
	d, err := m.Model("a", "")
	if err != nil {
		t.Fatal(err)
	}
	inflight := make(chan error, 1)
	go func() {
		_, err := d.Infer(context.Background(), []*tensor.Tensor{tensor.New("x", tensor.FP32, 1)}, nil)
		inflight <- err
	}()
	receive(t, l.entered, "the request to reach the model")
	if _, err := m.StopDrain(context.Background(), "a", 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Close(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close past its deadline: %v, want DeadlineExceeded", err)
		}
	case <-time.After(waitTimeout):
		t.Error("Close still waiting for a run its context gave up on")
		release()
		<-done
	}
	release()
	<-inflight
}

// gatedLoader loads models whose runs wait for gate and whose Close waits
// for the runs, as ONNX Runtime's sessions do.
type gatedLoader struct {
	gate    chan struct{}
	entered chan struct{}
}

func (*gatedLoader) Format() string   { return "gated" }
func (*gatedLoader) Available() error { return nil }
func (l *gatedLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return &gatedModel{l: l}, nil
}

type gatedModel struct {
	l  *gatedLoader
	mu sync.RWMutex
}

func (*gatedModel) Info() loaders.Info {
	return loaders.Info{Format: "gated", Inputs: []loaders.TensorSpec{{Name: "x", DType: tensor.FP32, Shape: []int64{-1}}},
		Outputs: []loaders.TensorSpec{{Name: "y", DType: tensor.FP32, Shape: []int64{-1}}}}
}

func (m *gatedModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	m.l.entered <- struct{}{}
	<-m.l.gate // ignores its context, as a run that cannot be stopped
	return []*tensor.Tensor{tensor.New("y", tensor.FP32, in[0].Shape[0])}, nil
}

func (m *gatedModel) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return nil
}
