package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
)

// A stop whose drain gives up on a request still running ends Stopped, but
// the model stays loaded until that request returns: it stays charged
// against the memory budget until then. Admission counted only active
// deployments, so the memory of a stopped model still in use was handed out
// again (for as long as the request runs).
func TestBudgetHeldAfterStopGivesUp(t *testing.T) {
	h := holdBudgetRequest(t)
	n, spec, release, inflight := h.n, h.spec, h.release, h.inflight

	st, err := n.m.StopDrain(context.Background(), "a", 20*time.Millisecond)
	if err != nil || st.State != deploy.Stopped {
		t.Fatalf("stop: %v %v", st.State, err)
	}
	if _, err := n.m.Assign("b", spec("b"), deploy.OwnerCentral); !errors.Is(err, deploy.ErrNoCapacity) {
		t.Errorf("Assign of 600 bytes while stopped a's 600-byte model still runs a request (budget 1000): err = %v, want ErrNoCapacity", err)
	}
	// Nor may the id a, taken again, hide its previous run's model.
	if _, err := n.m.Assign("a", spec("a2"), deploy.OwnerCentral); !errors.Is(err, deploy.ErrNoCapacity) {
		t.Errorf("Assign of 600 bytes under a's id while its old model still runs a request: err = %v, want ErrNoCapacity", err)
	}
	release()
	<-inflight
	// Once the request returned, the model closes and its memory is free.
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := n.m.Assign("b", spec("b"), deploy.OwnerCentral)
		if err == nil {
			break
		}
		if !errors.Is(err, deploy.ErrNoCapacity) || time.Now().After(deadline) {
			t.Fatalf("Assign after the stopped model closed: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitSettled(t, n.m, "b", deploy.Ready)
}

// A stored spec is checked again at restore against what the node allows
// now: one it no longer allows (here a GPU the node no longer has; the
// same goes for a guest's precise clock or memory pages) comes back Failed
// with the reason, and wins no model name from a deployment that may run.
// Restore started stored specs without validating them.
func TestRestoreRevalidatesSpecs(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true, cfg: deploy.Config{GPUs: 1}})
	missing := filepath.Join(dir, "later.onnx")
	if _, err := n1.m.Assign("b", linearSpec("m", artifact.Artifact{URI: "file://" + missing}), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "b", deploy.Failed)
	gpu := linearSpec("m", srv.Add("/a", linear(1)))
	gpu.Resources.GPUCount = 1
	if _, err := n1.m.Assign("a", gpu, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "a", deploy.Ready)
	n1.close()
	if err := os.WriteFile(missing, linear(3), 0o644); err != nil {
		t.Fatal(err)
	}

	n2 := newNode(t, nodeOpts{dir: dir, withStore: true}) // no GPU now
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	st := waitSettled(t, n2.m, "a", deploy.Failed)
	if !strings.Contains(st.Message, "gpu_count") {
		t.Errorf("a: %q does not say why", st.Message)
	}
	waitSettled(t, n2.m, "b", deploy.Ready)
	checkInfer(t, n2.m, "m", wantLinear(3))
}

// A node.toml model stays the operator's while it serves: a central spec
// under its id that differs only in guests is refused like any other spec,
// not swapped in. The guest swap skipped the owner check, so the Central
// Server could replace an operator's guests (and the swap was not even
// stored: the operator's guests came back at the restart).
func TestStaticModelGuestsAreNotSwappedByCentral(t *testing.T) {
	n := newGuestNode(t)
	spec := ocrSpec(n, t, "0,180")
	if _, err := n.m.Assign("ocr", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if st, err := n.m.WaitFor(ctx, "ocr", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("static deployment: %v %v", st.State, err)
	}
	next := ocrSpec(n, t, "upright,flipped")
	if _, err := n.m.Assign("ocr", next, deploy.OwnerCentral); !errors.Is(err, deploy.ErrExists) {
		t.Errorf("central swap of an operator model's guests: err = %v, want ErrExists", err)
	}
	d, err := n.m.Get("ocr")
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Status().Spec.Config["labels"]; got != "0,180" {
		t.Errorf("operator model's config is now %q", got)
	}
	// The operator's own swap still works.
	if _, err := n.m.Assign("ocr", next, deploy.OwnerOperator); err != nil {
		t.Errorf("operator swap: %v", err)
	}
}

// A watcher gets each change of a deployment once. Assign published the
// new deployment and so did its goroutine's first step, so every
// deployment's first status reached watchers twice (the same Seq, as did
// any status that two changes published after both had happened).
func TestWatchEventsNotDuplicated(t *testing.T) {
	const count = 20
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true})
	w := n.m.Watch(nil, false)
	a := srv.Add("/m", linear(1))
	for i := range count {
		id := fmt.Sprintf("d%d", i)
		if _, err := n.m.Assign(id, linearSpec(id, a), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
	}
	for i := range count {
		waitSettled(t, n.m, fmt.Sprintf("d%d", i), deploy.Ready)
	}
	n.closeManager()
	seen := map[uint64]deploy.Status{}
	for e := range w.C {
		if prev, dup := seen[e.Status.Seq]; dup {
			t.Errorf("%s: event #%d (%v) delivered twice (first as %s %v)", e.Status.ID, e.Status.Seq, e.Status.State, prev.ID, prev.State)
		}
		seen[e.Status.Seq] = e.Status
	}
	if w.Overflowed() {
		t.Fatal("watcher overflowed")
	}
}
