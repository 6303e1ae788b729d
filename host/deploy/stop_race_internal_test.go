package deploy

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// failingLoader's Load reports on entered, waits for gate, then fails.
type failingLoader struct {
	entered chan struct{}
	gate    chan struct{}
}

func (*failingLoader) Format() string   { return "failing" }
func (*failingLoader) Available() error { return nil }
func (l *failingLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	l.entered <- struct{}{}
	<-l.gate
	return nil, errors.New("corrupt model")
}

// A Stop that comes while a deployment's load is failing finds it Failed
// once its run has returned: no state goes backwards. The stop read the
// state before waiting for the run, and published Failed → Stopping
// ("draining in-flight requests") → Stopped.
//
// The interleaving is forced: the test holds the deployment's pipeline, on
// which the failing run's unload waits, until the Stop waits for the run.
func TestStopDuringFailureKeepsStateOrder(t *testing.T) {
	l := &failingLoader{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	m := NewManager(Config{}, loaders.NewRegistry(l), nil, nil, nil)
	defer m.Close(t.Context())
	w := m.Watch([]string{"a"}, false)
	defer w.Close()
	spec := Spec{Name: "a", Format: "failing", Model: artifact.Artifact{URI: "file:///nonexistent.model"}}
	if _, err := m.Assign("a", spec, OwnerCentral); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the load did not start")
	}
	d, err := m.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	p := d.pipe.Load()
	if p == nil || !p.enter() {
		t.Fatal("no pipeline to hold")
	}
	close(l.gate) // the load fails; the run's unload waits for p
	waitFor(t, "the failing run to wait for the pipeline", func() bool {
		if p.mu.TryRLock() {
			p.mu.RUnlock()
			return false
		}
		return true // a writer waits: unload retires p
	})
	stopped := make(chan error, 1)
	go func() {
		_, err := m.Stop(context.Background(), "a")
		stopped <- err
	}()
	waitFor(t, "the stop to wait for the run", func() bool {
		return goroutineBlockedIn("(*Manager).stop(", "chan receive")
	})
	p.leave()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	var states []State
	for len(states) == 0 || states[len(states)-1] != Stopped {
		select {
		case e := <-w.C:
			states = append(states, e.Status.State)
		case <-time.After(10 * time.Second):
			t.Fatalf("states %v: no Stopped", states)
		}
	}
	for i := 1; i < len(states); i++ {
		if states[i-1] == Failed && states[i] != Stopped {
			t.Errorf("states %v: Failed then %v", states, states[i])
		}
	}
}

// waitFor waits until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// goroutineBlockedIn reports whether a goroutine whose stack has fn is
// blocked in state (as runtime.Stack names it, e.g. "chan receive").
func goroutineBlockedIn(fn, state string) bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, fn) && strings.Contains(strings.SplitN(g, "\n", 2)[0], state) {
			return true
		}
	}
	return false
}
