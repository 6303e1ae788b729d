package deploy

import (
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// A deployment created while a Watch takes its snapshot is in the snapshot
// or in the live events: a snapshot taken before the broker's lock missed
// one whose Assign published in between.
//
// The interleaving is forced: the test holds the broker's lock so that
// Watch stops after its List; an Assign is then made the way Assign does it
// (registered in byID under m.mu, then m.changed publishes), its publication
// taking the broker's lock before the waiting Watch gets it. With one P the
// woken Watch cannot run before the test goroutine blocks.
func TestWatchSnapshotSeesConcurrentAssign(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	m := NewManager(Config{}, loaders.NewRegistry(), nil, nil, nil)
	defer m.Close(t.Context())

	m.watch.mu.Lock()
	got := make(chan *Watcher, 1)
	go func() { got <- m.Watch([]string{"d"}, true) }()
	waitBlockedInWatch(t)

	// What Assign does once Watch has listed: register d (startLocked,
	// without starting its goroutine), release m.mu, publish (m.changed).
	spec := Spec{Name: "d", Format: "onnx", Model: artifact.Artifact{URI: "file:///nonexistent.onnx"}}
	d := m.newDeployment("d", OwnerCentral, spec, time.Now())
	d.cancel = func(error) {}
	close(d.done)
	m.mu.Lock()
	m.byID[d.id] = d
	m.byName[spec.Name] = d
	m.mu.Unlock()
	m.watch.mu.Unlock()
	m.changed(d) // Assign's publication of the new deployment

	w := <-got
	defer w.Close()
	if len(w.C) == 0 {
		t.Errorf("deployment %q exists (List has it: %v) and was published, but the watcher of it got neither a snapshot nor a live event",
			d.id, len(m.List()) == 1)
	}
}

// waitBlockedInWatch waits until a goroutine is blocked on a mutex inside
// Manager.Watch (the broker's lock: m.mu is free, so List never blocks).
func waitBlockedInWatch(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		s := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(s, "\n\n") {
			if strings.Contains(g, "(*Manager).Watch(") && strings.Contains(g, "sync.(*Mutex).Lock") && !strings.Contains(g, "(*Manager).List(") {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("Watch did not block on the broker's lock")
}

// TestWatchDropsLiveEventsOlderThanSnapshot: changed() reads a status,
// persists it (an fsync) and only then publishes it, so a watcher whose
// snapshot was read in between saw Ready, then a live Loading, then Ready
// again. Live events not newer than the snapshot's are dropped.
func TestWatchDropsLiveEventsOlderThanSnapshot(t *testing.T) {
	m := &Manager{byID: map[string]*Deployment{}, byName: map[string]*Deployment{}, log: slog.New(slog.DiscardHandler)}
	d := m.newDeployment("d", OwnerCentral, Spec{Name: "x"}, time.Now())
	m.byID["d"] = d
	old := d.Status() // read by a changed() that has not published yet
	m.set2(d, Ready)
	w := m.Watch(nil, true)
	defer w.Close()
	snap := <-w.C
	if !snap.Snapshot || snap.Status.State != Ready {
		t.Fatalf("snapshot %+v", snap)
	}
	m.watch.publish(Event{Status: old}) // the late, older publication
	d.mu.Lock()
	d.state = Running
	d.bump()
	d.mu.Unlock()
	m.watch.publish(Event{Status: d.Status()})
	if e := <-w.C; e.Status.State != Running {
		t.Fatalf("after the snapshot (Ready): live %v, want the older Pending dropped and Running delivered", e.Status.State)
	}
}

// set2 changes d's state as set does, without persisting or publishing.
func (m *Manager) set2(d *Deployment, s State) {
	d.mu.Lock()
	d.state = s
	d.bump()
	d.mu.Unlock()
}
