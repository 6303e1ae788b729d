package deploy

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// blockingLoader's Load reports on entered, then waits for its context.
type blockingLoader struct{ entered chan struct{} }

func (*blockingLoader) Format() string   { return "blocking" }
func (*blockingLoader) Available() error { return nil }
func (l *blockingLoader) Load(ctx context.Context, _ string, _ loaders.Options) (loaders.Model, error) {
	l.entered <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// restartHeld is a deployment "a" (model name m) restarting for a config
// change it got while loading, held once its old run is marked Stopped and
// before the new run starts.
type restartHeld struct {
	m       *Manager
	resume  func()       // lets the restart go on
	changed <-chan error // the change's result
}

// holdRestart forces the interleaving: it holds the loading deployment's
// pipeline (the restart's stop waits for it) until the stop has published
// Stopping, then its publishing lock, so that the stop halts once it has
// marked the old run Stopped.
func holdRestart(t *testing.T, cfg Config) restartHeld {
	t.Helper()
	l := &blockingLoader{entered: make(chan struct{}, 2)}
	m := NewManager(cfg, loaders.NewRegistry(l, okLoader{}), nil, nil, nil)
	t.Cleanup(func() { m.Close(context.Background()) })
	spec := Spec{Name: "m", Format: "blocking", Model: artifact.Artifact{URI: "file:///a.model"},
		Resources: Resources{MemoryBytes: 600}, Config: map[string]string{"k": "1"}}
	if _, err := m.Assign("a", spec, OwnerCentral); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the load did not start")
	}
	old, err := m.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	p := old.pipe.Load()
	if p == nil || !p.enter() {
		t.Fatal("no pipeline to hold")
	}
	w := m.Watch([]string{"a"}, false)
	defer w.Close()

	next := spec
	next.Config = map[string]string{"k": "2"}
	changed := make(chan error, 1)
	go func() {
		_, err := m.AssignContext(context.Background(), "a", next, OwnerCentral)
		changed <- err
	}()
	for stopping := false; !stopping; {
		select {
		case e := <-w.C:
			stopping = e.Status.State == Stopping
		case <-time.After(10 * time.Second):
			t.Fatal("the restart did not stop the loading run")
		}
	}
	old.pub.Lock() // the old run's Stopped waits to be published
	p.leave()
	waitFor(t, "the old run to be marked Stopped", func() bool { return old.State() == Stopped })
	return restartHeld{m: m, resume: sync.OnceFunc(old.pub.Unlock), changed: changed}
}

// check lets the restart finish and checks that it started a's new run.
func (h restartHeld) check(t *testing.T) {
	t.Helper()
	h.resume()
	if err := <-h.changed; err != nil {
		t.Fatalf("guest change while loading: %v", err)
	}
	d, err := h.m.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); !st.State.Active() || st.Spec.Config["k"] != "2" {
		t.Fatalf("a is %v with config %v, want it starting with the new one", st.State, st.Spec.Config)
	}
	if got, err := h.m.Model("m", ""); got != d {
		t.Errorf("model m answers with %v (%v), want a's new run", got, err)
	}
}

// A guest (config) change to a deployment still loading stops it and starts
// it again under the same id: its model name stays its own in between.
// Another deployment assigned the same model name at that moment took it,
// and the change then failed ALREADY_EXISTS, leaving the first one Stopped.
func TestGuestChangeRestartKeepsModelName(t *testing.T) {
	h := holdRestart(t, Config{})
	other := Spec{Name: "m", Format: "ok", Model: artifact.Artifact{URI: "file:///b.model"}}
	_, err := h.m.Assign("b", other, OwnerCentral)
	h.resume()
	if !errors.Is(err, ErrExists) {
		t.Errorf("another deployment of model name m while a restarts: %v, want ErrExists", err)
	}
	h.check(t)
}

// The same for the node's capacity: the restarting deployment keeps its
// place (limits.max_deployments) and its memory (limits.memory_budget).
// Another deployment assigned at that moment took them, and the change
// failed RESOURCE_EXHAUSTED, leaving the first one Stopped.
func TestGuestChangeRestartKeepsItsPlace(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"max_deployments", Config{MaxDeployments: 1}},
		{"memory_budget", Config{MemoryBudget: 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := holdRestart(t, tc.cfg)
			other := Spec{Name: "n", Format: "ok", Model: artifact.Artifact{URI: "file:///b.model"},
				Resources: Resources{MemoryBytes: 600}}
			_, err := h.m.Assign("b", other, OwnerCentral)
			h.resume()
			if !errors.Is(err, ErrNoCapacity) {
				t.Errorf("another deployment while a restarts on a full node: %v, want ErrNoCapacity", err)
			}
			h.check(t)
		})
	}
}
