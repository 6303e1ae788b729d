package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	bolt "go.etcd.io/bbolt"
)

// A Stop that comes while a guest swap is downloading cancels the swap: the
// deployment ends Stopped, and the swap installs nothing on it.
func TestStopCancelsGuestSwap(t *testing.T) {
	n := newGuestNode(t)
	srv := artifacttest.New(t)
	spec := func(labels string, post artifact.Artifact) deploy.Spec { return postSpec(t, n, labels, post) }
	post := guesttest.Build(t, "guests/examples/cls-post")
	if st := n.deploy(t, "dep", spec("a,b", srv.Add("/post1.wasm", post))); !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	// The same guest with a custom section appended: another digest, so
	// the cache has to download it.
	other := append(append([]byte{}, post...), 0, 5, 4, 's', 'w', 'a', 'p')
	next := srv.Add("/post2.wasm", other)
	release := srv.Stall("/post2.wasm")
	defer release()
	swapped := make(chan error, 1)
	go func() {
		_, err := n.m.Assign("dep", spec("x,y", next), deploy.OwnerCentral)
		swapped <- err
	}()
	deadline := time.Now().Add(waitTimeout)
	for srv.Hits("/post2.wasm") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the swap never asked for its guest")
		}
		time.Sleep(time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if _, err := n.m.Stop(context.Background(), "dep"); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	select {
	case <-stopped:
	case <-time.After(waitTimeout):
		t.Fatal("Stop waited for the stalled swap")
	}
	if err := <-swapped; err == nil {
		t.Error("the swap succeeded on a stopped deployment")
	}
	d, _ := n.m.Get("dep")
	if st := d.Status(); st.State != deploy.Stopped || st.Spec.Config["labels"] != "a,b" {
		t.Errorf("after stop and swap: %v, labels %q", st.State, st.Spec.Config["labels"])
	}
}

// TestSwapUnpinsReplacedGuests: a guest swap lets go of the guests it
// replaced, and a failed swap of the ones it fetched: the cache could
// evict neither before (pins only grew while the deployment lived).
func TestSwapUnpinsReplacedGuests(t *testing.T) {
	n := newGuestNode(t)
	srv := artifacttest.New(t)
	spec := func(labels string, post artifact.Artifact) deploy.Spec { return postSpec(t, n, labels, post) }
	post := guesttest.Build(t, "guests/examples/cls-post")
	v1 := srv.Add("/post1.wasm", post)
	if st := n.deploy(t, "dep", spec("a,b", v1)); !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	v2 := srv.Add("/post2.wasm", append(append([]byte{}, post...), 0, 6, 4, 's', 'w', 'a', 'p', 1))
	if _, err := n.m.Assign("dep", spec("x,y", v2), deploy.OwnerCentral); err != nil {
		t.Fatalf("swap to v2: %v", err)
	}
	// v3 is not a module: fetched (and pinned), then refused at compile.
	v3 := srv.Add("/post3.wasm", []byte("not wasm"))
	if _, err := n.m.Assign("dep", spec("p,q", v3), deploy.OwnerCentral); err == nil {
		t.Fatal("swap to a broken guest succeeded")
	}
	for name, a := range map[string]artifact.Artifact{"replaced v1": v1, "failed v3": v3} {
		if err := n.cache.Release(a.SHA256); !errors.Is(err, artifact.ErrNotFound) {
			t.Errorf("%s is still pinned (Release: %v)", name, err)
		}
	}
	if err := n.cache.Acquire(v2.SHA256); err != nil { // balance the check below
		t.Fatal(err)
	}
	if err := n.cache.Release(v2.SHA256); err != nil {
		t.Errorf("v2, serving, is not pinned: %v", err)
	}
}

// Two stored deployments that want one model name (one failed, then another
// id took the name): after a restart the one that served wins, whatever
// their ids' order, and the other comes back Failed saying why.
func TestRestoreGivesNameToServingDeployment(t *testing.T) {
	srv := artifacttest.New(t)
	for _, ids := range [][2]string{{"dep-z", "dep-a"}, {"dep-a", "dep-z"}} {
		failing, healthy := ids[0], ids[1]
		t.Run(failing+" failed", func(t *testing.T) {
			dir := t.TempDir()
			n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
			missing := artifact.Artifact{URI: "file://" + dir + "/missing.onnx"}
			if _, err := n1.m.Assign(failing, linearSpec("m", missing), deploy.OwnerCentral); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, n1.m, failing, deploy.Failed)
			if _, err := n1.m.Assign(healthy, linearSpec("m", srv.Add("/"+healthy, linear(1))), deploy.OwnerCentral); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, n1.m, healthy, deploy.Ready)
			n1.close()

			n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
			if err := n2.m.Restore(); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, n2.m, healthy, deploy.Ready)
			st := waitSettled(t, n2.m, failing, deploy.Failed)
			if !strings.Contains(st.Message, healthy) {
				t.Errorf("%s: message %q does not name %s", failing, st.Message, healthy)
			}
			d, err := n2.m.Model("m", "")
			if err != nil || d.ID() != healthy {
				t.Fatalf("model m: served by %v, %v", d.ID(), err)
			}
			checkInfer(t, n2.m, "m", wantLinear(1))
		})
	}
}

// Restore admits deployments as Assign does: past max_deployments, the rest
// come back Failed.
func TestRestoreAppliesAdmission(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
	for _, id := range []string{"a", "b", "c"} {
		if _, err := n1.m.Assign(id, linearSpec(id, srv.Add("/"+id, linear(1))), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, n1.m, id, deploy.Ready)
	}
	n1.close()
	n2 := newNode(t, nodeOpts{dir: dir, withStore: true, cfg: deploy.Config{MaxDeployments: 2}})
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	var ready, failed int
	for _, id := range []string{"a", "b", "c"} {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		st, err := n2.m.WaitFor(ctx, id, deploy.Settled)
		cancel()
		switch {
		case err != nil:
			t.Fatal(err)
		case st.State.Serving():
			ready++
		case st.State == deploy.Failed && strings.Contains(st.Message, "max_deployments"):
			failed++
		default:
			t.Errorf("%s: %v %s", id, st.State, st.Message)
		}
	}
	if ready != 2 || failed != 1 {
		t.Errorf("restored %d ready, %d failed; want 2 and 1", ready, failed)
	}
}

// The memory budget holds against what models hold once loaded, also when
// their artifacts declare no size (admission then charges nothing).
func TestMemoryBudgetCountsLoadedModels(t *testing.T) {
	srv := artifacttest.New(t)
	w := make([][]float32, 64)
	for i := range w {
		w[i] = make([]float32, 64)
	}
	big := onnxtest.Linear(w, make([]float32, 64)) // ~16.8 kB
	n := newNode(t, nodeOpts{cfg: deploy.Config{MemoryBudget: 20000}})
	ids := []string{"a", "b", "c"}
	for _, id := range ids {
		if _, err := n.m.Assign(id, linearSpec(id, srv.Add("/"+id, big)), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
	}
	var used int64
	var refused int
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		st, err := n.m.WaitFor(ctx, id, deploy.Settled)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		used += st.MemoryBytes
		if st.State == deploy.Failed {
			if !strings.Contains(st.Message, "memory budget") {
				t.Errorf("%s failed for another reason: %s", id, st.Message)
			}
			refused++
		}
	}
	if used > 20000 || refused < 2 {
		t.Errorf("charged %d bytes of a 20000 budget, %d refused", used, refused)
	}
}

// Stop and Assign of one id at once end in an order one of them could have
// had alone: what runs in memory is what the store will restore.
func TestStopAndAssignAgreeWithStore(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true, quiet: true})
	for i := range 100 {
		id := fmt.Sprint("dep-", i)
		spec := linearSpec(id, srv.Add("/"+id, linear(1)))
		if _, err := n.m.Assign(id, spec, deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, n.m, id, deploy.Ready)
		if _, err := n.m.Stop(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); n.m.Stop(context.Background(), id) }()
		go func() { defer wg.Done(); n.m.Assign(id, spec, deploy.OwnerCentral) }()
		wg.Wait()
		d, err := n.m.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := n.store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if running := rec.Desired == store.DesiredRunning; d.State().Active() != running {
			t.Fatalf("round %d: in memory %v, stored desired %v", i, d.State(), rec.Desired)
		}
		n.m.Stop(context.Background(), id) // frees the slot for the next round
	}
}

// The operator's static models (assigned before Restore) keep their names:
// a stored deployment that wants one comes back Failed.
func TestRestoreLeavesStaticNamesAlone(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if _, err := n1.m.Assign("dep", linearSpec("m", srv.Add("/dep", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "dep", deploy.Ready)
	n1.close()

	n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if _, err := n2.m.Assign("m", linearSpec("m", srv.Add("/static", linear(2))), deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n2.m, "m", deploy.Ready)
	if st := waitSettled(t, n2.m, "dep", deploy.Failed); !strings.Contains(st.Message, `"m"`) {
		t.Errorf("dep: %s", st.Message)
	}
	checkInfer(t, n2.m, "m", wantLinear(2))
}

// A stored record that cannot be read does not keep the others from coming
// back.
func TestRestoreSkipsCorruptRecords(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if _, err := n1.m.Assign("dep", linearSpec("m", srv.Add("/dep", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "dep", deploy.Ready)
	n1.close()
	db, err := bolt.Open(filepath.Join(dir, "deployments.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { // a record in a format this node does not know
		return tx.Bucket([]byte("deployments")).Put([]byte("from-the-future"), []byte{99, '{', '}'})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n2.m, "dep", deploy.Ready)
}

// A stored record skipped at restore (its id is a static model's) does not
// win a model name from the records that come back.
func TestRestoreSkippedRecordWinsNothing(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
	missing := filepath.Join(dir, "later.onnx")
	if _, err := n1.m.Assign("y", linearSpec("m", artifact.Artifact{URI: "file://" + missing}), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "y", deploy.Failed)
	if _, err := n1.m.Assign("x", linearSpec("m", srv.Add("/x", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "x", deploy.Ready)
	n1.close()

	if err := os.WriteFile(missing, linear(3), 0o644); err != nil {
		t.Fatal(err)
	}
	n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if _, err := n2.m.Assign("x", linearSpec("static", srv.Add("/s", linear(2))), deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n2.m, "y", deploy.Ready)
	checkInfer(t, n2.m, "m", wantLinear(3))
}

// "model" names the model's own artifact: a guest may not take it.
func TestGuestNamedModelIsRefused(t *testing.T) {
	n := newGuestNode(t)
	spec := deploy.Spec{Name: "m", Format: "onnx", Model: n.file(t, "m.onnx", linear(1)),
		Guests: []deploy.Guest{{Name: "model", Artifact: n.wasm(t, "guests/examples/ppocr-pre"), Roles: []string{"preprocess"}}}}
	if _, err := n.m.Assign("d", spec, deploy.OwnerCentral); !errors.Is(err, deploy.ErrInvalidSpec) {
		t.Fatalf("guest named model: %v, want ErrInvalidSpec", err)
	}
}

// An id of the operator's (node.toml) stays theirs when its model failed:
// a central spec under it is refused, not stored to vanish at the restart.
func TestFailedStaticIDIsNotTakenOver(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true})
	missing := artifact.Artifact{URI: "file://" + filepath.Join(n.dir, "missing.onnx")}
	if _, err := n.m.Assign("x", linearSpec("x", missing), deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "x", deploy.Failed)
	if _, err := n.m.Assign("x", linearSpec("central", srv.Add("/c", linear(1))), deploy.OwnerCentral); !errors.Is(err, deploy.ErrExists) {
		t.Fatalf("central spec under a failed static id: %v, want ErrExists", err)
	}
}

// Spec errors never show a URI's query (pre-signed URLs carry credentials).
func TestSpecErrorsRedactURIs(t *testing.T) {
	n := newNode(t, nodeOpts{})
	spec := linearSpec("m", artifact.Artifact{URI: "https://bucket.example/obj%zz?X-Amz-Signature=SECRET123", SHA256: strings.Repeat("a", 64)})
	_, err := n.m.Assign("d", spec, deploy.OwnerCentral)
	if !errors.Is(err, deploy.ErrInvalidSpec) || strings.Contains(err.Error(), "SECRET123") {
		t.Fatalf("err = %v", err)
	}
}

// postSpec is model "m" with the postprocess guest post and its labels.
func postSpec(t *testing.T, n *guestNode, labels string, post artifact.Artifact) deploy.Spec {
	return deploy.Spec{Name: "m", Format: "onnx", Model: n.file(t, "m.onnx", linear(1)),
		Config: map[string]string{"labels": labels},
		Guests: []deploy.Guest{{Name: "post", Roles: []string{"postprocess"}, Artifact: post}}}
}
