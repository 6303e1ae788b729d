package deploy

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// closeCountLoader loads okModels that count their Close.
type closeCountLoader struct{ closed atomic.Int64 }

func (*closeCountLoader) Format() string   { return "counted" }
func (*closeCountLoader) Available() error { return nil }
func (l *closeCountLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return &closeCountModel{l: l}, nil
}

type closeCountModel struct {
	okModel
	l *closeCountLoader
}

func (m *closeCountModel) Close() error { m.l.closed.Add(1); return nil }

// A Close whose context has already ended (the node's drain of its calls
// used the whole shutdown_timeout) still closes every idle model, at once.
// It took each deployment's id lock under that context, and a select
// between a free lock and an ended context picks either: about half the
// models were never closed (their sessions, guests and cache pins held
// until the process exits), and an Assign or Stop on a free id failed
// "another operation on it is under way".
func TestCloseWithEndedContextClosesEveryModel(t *testing.T) {
	l := &closeCountLoader{}
	m := NewManager(Config{}, loaders.NewRegistry(l), nil, nil, nil)
	const n = 16
	for i := range n {
		id := fmt.Sprintf("d%d", i)
		spec := Spec{Name: id, Format: "counted", Model: artifact.Artifact{URI: "file:///" + id}}
		if _, err := m.Assign(id, spec, OwnerCentral); err != nil {
			t.Fatal(err)
		}
		if st, err := m.WaitFor(t.Context(), id, Settled); err != nil || st.State != Ready {
			t.Fatalf("%s: %v %v (%s)", id, err, st.State, st.Message)
		}
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	m.Close(ended)
	waitFor(t, "every model to close", func() bool { return l.closed.Load() == n })

	m2 := NewManager(Config{}, loaders.NewRegistry(l), nil, nil, nil)
	defer m2.Close(t.Context())
	for i := range n {
		id := fmt.Sprintf("e%d", i)
		spec := Spec{Name: id, Format: "counted", Model: artifact.Artifact{URI: "file:///" + id}}
		if _, err := m2.AssignContext(ended, id, spec, OwnerCentral); err != nil {
			t.Fatalf("assign of a free id under an ended context: %v", err)
		}
	}
}

// A Close that gives up on a deployment whose id another operation holds
// (a guest swap still compiling as the node stops) still closes its model
// once that operation lets the id go. Its goroutine gave up on the id with
// the Close, and the model, its guests and its cache pins stayed open.
func TestCloseClosesModelAfterTheIDIsFree(t *testing.T) {
	l := &closeCountLoader{}
	m := NewManager(Config{}, loaders.NewRegistry(l), nil, nil, nil)
	spec := Spec{Name: "a", Format: "counted", Model: artifact.Artifact{URI: "file:///a"}}
	if _, err := m.Assign("a", spec, OwnerCentral); err != nil {
		t.Fatal(err)
	}
	if st, err := m.WaitFor(t.Context(), "a", Settled); err != nil || st.State != Ready {
		t.Fatalf("a: %v %v (%s)", err, st.State, st.Message)
	}
	unlock, err := m.ops.lock(t.Context(), "a") // a swap holds the id
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := m.Close(ctx); err == nil {
		t.Fatal("Close returned before the id it waits for was free")
	}
	unlock()
	waitFor(t, "the model to close", func() bool { return l.closed.Load() == 1 })
}
