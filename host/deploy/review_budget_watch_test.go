package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
)

// While a Stop drains a request in flight, the stopping deployment's model
// is still loaded and stays charged against the memory budget: a
// concurrent Assign was admitted into memory still held (for up to the
// drain timeout, which may be an hour).
func TestBudgetHeldWhileStopDrains(t *testing.T) {
	h := holdBudgetRequest(t)
	n, d, spec, release, inflight := h.n, h.d, h.spec, h.release, h.inflight

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		n.m.StopDrain(context.Background(), "a", time.Minute)
	}()
	// Wait until the Stop is draining (Stopping, the request still held).
	deadline := time.Now().Add(waitTimeout)
	for d.State() != deploy.Stopping {
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if c := n.loader.closes.Load(); c != 0 {
		t.Fatalf("model closed with a request in flight (%d)", c)
	}
	st := d.Status()
	t.Logf("draining: a is %v, charged %d bytes, model still loaded", st.State, st.MemoryBytes)
	if st.MemoryBytes != 600 {
		t.Errorf("a still holds its loaded model while draining but is charged %d bytes, want 600", st.MemoryBytes)
	}
	_, err := n.m.Assign("b", spec("b"), deploy.OwnerCentral)
	if !errors.Is(err, deploy.ErrNoCapacity) {
		t.Errorf("Assign of 600 bytes while a's 600-byte model is still loaded (budget 1000): err = %v, want ErrNoCapacity", err)
	}
	release()
	<-inflight
	<-stopped
}

// Watch with snapshot delivers every deployment: past the watcher's buffer
// (1024) the snapshot was silently cut short, and a long-lived node passes
// 1024 (failed deployments are kept, and as many stopped ones as the node
// is told to keep).
func TestWatchSnapshotComplete(t *testing.T) {
	const count = 1100
	n := newNode(t, nodeOpts{withStore: true, quiet: true, cfg: deploy.Config{KeepStopped: 2 * count}})
	raw, err := json.Marshal(linearSpec("x", artifact.Artifact{URI: "file:///nonexistent.onnx"}))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range count {
		id := fmt.Sprintf("dep-%04d", i)
		var spec deploy.Spec
		json.Unmarshal(raw, &spec)
		spec.Name = id
		b, _ := json.Marshal(spec)
		if err := n.store.Put(store.Record{ID: id, Spec: b, Desired: store.DesiredStopped, State: "Stopped",
			Created: now, Updated: now, Owner: deploy.OwnerCentral}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.m.Restore(); err != nil {
		t.Fatal(err)
	}
	if l := len(n.m.List()); l != count {
		t.Fatalf("%d deployments listed, want %d", l, count)
	}
	w := n.m.Watch(nil, true)
	defer w.Close()
	got := len(w.C)
	t.Logf("snapshot of %d deployments: %d events, overflowed %v", count, got, w.Overflowed())
	if got != count && !w.Overflowed() {
		t.Errorf("snapshot delivered %d of %d deployments and the watcher is not marked overflowed: %d silently missing",
			got, count, count-got)
	}
}

// A snapshot may be newer than the live events that follow it: changed()
// computes a status under d.pub, then stores it (an fsync, behind any other
// writer of the store) and only then publishes; Watch's snapshot reads
// d.Status() directly, without d.pub. Here an idempotent Assign publishes
// Loading while the store is busy, the load finishes meanwhile (state
// Ready, its publication queued behind d.pub), and a watcher that arrives
// then gets snapshot Ready followed by live Loading.
// variant is the guest with a custom section "ver<c>" inserted after the
// header: the same code under another digest.
func variant(wasm []byte, c byte) []byte {
	out := append([]byte{}, wasm[:8]...)
	out = append(out, 0, 5, 4, 'v', 'e', 'r', c)
	return append(out, wasm[8:]...)
}
