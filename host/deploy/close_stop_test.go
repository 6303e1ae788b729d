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
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Close during a Stop that is still draining waits for that Stop (within
// its context): it returned nil at once, every deployment "closed", while
// the stopped deployment's model was still running a request and open,
// so the node went on to close what that model still used.
func TestCloseWaitsForStopInProgress(t *testing.T) {
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
	// Batched: a request whose caller gives up leaves the model's run to
	// the batcher (unbatched, it runs on its caller's goroutine).
	spec := deploy.Spec{Name: "a", Format: "gated", Model: srv.Add("/a", []byte("model")),
		Batching: engine.Config{MaxBatchSize: 4, MaxQueueDelay: time.Millisecond}}
	if _, err := m.Assign("a", spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, m, "a", deploy.Ready)
	d, err := m.Model("a", "")
	if err != nil {
		t.Fatal(err)
	}
	// A run its caller gave up on: the model goes on with it.
	ctx, cancel := context.WithCancel(context.Background())
	inflight := make(chan error, 1)
	go func() {
		_, err := d.Infer(ctx, []*tensor.Tensor{tensor.New("x", tensor.FP32, 1)}, nil)
		inflight <- err
	}()
	receive(t, l.entered, "the request to reach the model")
	cancel()
	<-inflight

	w := m.Watch([]string{"a"}, false)
	defer w.Close()
	stopped := make(chan error, 1)
	go func() {
		_, err := m.StopDrain(context.Background(), "a", time.Minute)
		stopped <- err
	}()
	for e := range w.C {
		if e.Status.State == deploy.Stopping {
			break
		}
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer ccancel()
	if err := m.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close while a stop drains a model still running: %v, want DeadlineExceeded (it did not wait)", err)
	}
	release()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
