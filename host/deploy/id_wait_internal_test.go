package deploy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// okLoader loads any path as a model that returns its inputs.
type okLoader struct{}

func (okLoader) Format() string   { return "ok" }
func (okLoader) Available() error { return nil }
func (okLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return okModel{}, nil
}

type okModel struct{}

func (okModel) Info() loaders.Info { return loaders.Info{} }
func (okModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	return in, nil
}
func (okModel) Close() error { return nil }

// An Assign or a Stop that waits for another operation on its deployment
// (a Stop draining it for an hour, say) gives up when its call's context
// ends, and leaves no trace: the deployment serves on, swaps are not
// refused as "being stopped", and the id's lock is forgotten once free.
// Both waited for the lock however long, past their caller's deadline.
func TestAssignAndStopGiveUpWaitingForTheID(t *testing.T) {
	m := NewManager(Config{}, loaders.NewRegistry(okLoader{}), nil, nil, nil)
	defer m.Close(t.Context())
	spec := Spec{Name: "a", Format: "ok", Model: artifact.Artifact{URI: "file:///a.model"}}
	if _, err := m.Assign("a", spec, OwnerCentral); err != nil {
		t.Fatal(err)
	}
	if st, err := m.WaitFor(t.Context(), "a", Settled); err != nil || st.State != Ready {
		t.Fatalf("a: %v %v (%s)", err, st.State, st.Message)
	}

	unlock, err := m.ops.lock(t.Context(), "a") // another operation holds the id
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		call func(context.Context) error
	}{
		{"assign", func(ctx context.Context) error { _, err := m.AssignContext(ctx, "a", spec, OwnerCentral); return err }},
		{"stop", func(ctx context.Context) error { _, err := m.StopDrain(ctx, "a", time.Hour); return err }},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		err := op.call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s while the id is held: %v, want the call's deadline", op.name, err)
		}
		t.Logf("%s: %v", op.name, err)
	}
	d, err := m.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	d.mu.RLock()
	stopping := d.stopping
	d.mu.RUnlock()
	if stopping != 0 {
		t.Errorf("a Stop that gave up left the deployment marked as stopping (%d)", stopping)
	}
	if st := d.State(); st != Ready {
		t.Errorf("a is %v, want Ready", st)
	}
	unlock()
	m.ops.mu.Lock()
	left := len(m.ops.locks)
	m.ops.mu.Unlock()
	if left != 0 {
		t.Errorf("%d id locks kept after every holder and waiter left", left)
	}
	if st, err := m.Stop(t.Context(), "a"); err != nil || st.State != Stopped {
		t.Fatalf("stop once the id is free: %v %v", st.State, err)
	}
}
