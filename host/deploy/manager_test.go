package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A deployment over HTTP, as a watcher sees it: Pending, Fetching (with
// byte progress), Loading, Ready; then it serves the right numbers.
func TestAssignFetchLoadServe(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true})
	model := linear(0.5)
	a := srv.Add("/models/linear.onnx", model)

	w := n.m.Watch([]string{"dep-1"}, false)
	defer w.Close()
	st, err := n.m.Assign("dep-1", linearSpec("linear", a), deploy.OwnerCentral)
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != "dep-1" || st.Owner != deploy.OwnerCentral || !st.State.Active() {
		t.Fatalf("Assign returned %+v", st)
	}

	var states []deploy.State
	var fetched, loadPhase bool
	var ready deploy.Status
	timeout := time.After(waitTimeout)
	for ready.ID == "" {
		select {
		case e, ok := <-w.C:
			if !ok {
				t.Fatal("watch ended before Ready")
			}
			s := e.Status
			if len(states) == 0 || states[len(states)-1] != s.State {
				states = append(states, s.State)
			}
			switch s.State {
			case deploy.Fetching:
				if s.Progress.Phase != "fetch model" {
					t.Errorf("fetch progress phase %q", s.Progress.Phase)
				}
				if size := int64(len(model)); s.Progress.Done == size && s.Progress.Total == size {
					fetched = true
				}
			case deploy.Loading:
				loadPhase = loadPhase || s.Progress.Phase == "load"
			case deploy.Ready:
				ready = s
			case deploy.Failed:
				t.Fatalf("failed: %s", s.Message)
			}
		case <-timeout:
			t.Fatalf("not Ready after %v; states so far %v", waitTimeout, states)
		}
	}
	if want := []deploy.State{deploy.Pending, deploy.Fetching, deploy.Loading, deploy.Ready}; !slices.Equal(states, want) {
		t.Errorf("states %v, want %v", states, want)
	}
	if !fetched {
		t.Errorf("no Fetching event reported %d of %d bytes", len(model), len(model))
	}
	if !loadPhase {
		t.Error("no Loading event with phase \"load\"")
	}
	if ready.Progress != (deploy.Progress{}) || ready.Info.Platform != onnx.Platform || ready.MemoryBytes <= 0 ||
		!strings.HasPrefix(ready.Message, "loaded in") {
		t.Errorf("Ready status: progress %+v, platform %q, memory %d, message %q",
			ready.Progress, ready.Info.Platform, ready.MemoryBytes, ready.Message)
	}

	checkInfer(t, n.m, "linear", wantLinear(0.5))
	// Two rows at once: X=[[1,1,1],[1,0,2]] → [[9.5,11.5],[11.5,13.5]].
	d, err := n.m.Model("linear", "1")
	if err != nil {
		t.Fatal(err)
	}
	x := tensor.FromSlice("X", tensor.FP32, []int64{2, 3}, []float32{1, 1, 1, 1, 0, 2})
	outs, err := d.Infer(t.Context(), []*tensor.Tensor{x}, []string{"Y"})
	if err != nil {
		t.Fatal(err)
	}
	if got := tensor.View[float32](outs[0]); fmt.Sprint(got, outs[0].Shape) != "[9.5 11.5 11.5 13.5] [2 2]" {
		t.Errorf("Y = %v %v", got, outs[0].Shape)
	}
	if s := d.State(); s != deploy.Running {
		t.Errorf("state after serving %v, want Running", s)
	}

	_, err = n.m.Model("linear", "2")
	wantErr(t, err, deploy.ErrNotFound, `version "2"`)
	_, err = n.m.Model("nope", "")
	wantErr(t, err, deploy.ErrNotFound, `"nope"`)

	rec, err := n.store.Get("dep-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Desired != store.DesiredRunning || rec.State != deploy.Running.String() || rec.Owner != deploy.OwnerCentral {
		t.Errorf("stored record: desired %q state %q owner %q", rec.Desired, rec.State, rec.Owner)
	}
	if h := srv.Hits("/models/linear.onnx"); h != 1 {
		t.Errorf("%d downloads, want 1", h)
	}
	tmpEmpty(t, n.dir)
}

// Every way a fetch or load can fail ends in Failed with a reason that says
// what went wrong, and leaves a healthy deployment next to it alone.
func TestFailuresAreIsolated(t *testing.T) {
	srv := artifacttest.New(t)
	gone := artifacttest.New(t)
	gone.Close() // connection refused from here on
	n := newNode(t, nodeOpts{withStore: true, cfg: deploy.Config{FetchTimeout: 300 * time.Millisecond}})

	good := srv.Add("/good.onnx", linear(1))
	served := linear(2)
	liar := srv.Add("/liar.onnx", served)
	declared := artifacttest.Digest([]byte("some other model"))
	liar.SHA256 = declared
	// Distinct digests: fetches of one digest share a download.
	missing := artifact.Artifact{URI: srv.URL + "/missing.onnx", SHA256: artifacttest.Digest(linear(5))}
	refused := artifact.Artifact{URI: gone.URL + "/m.onnx", SHA256: artifacttest.Digest(linear(6))}
	slow := srv.Add("/slow.onnx", linear(3))
	release := srv.Stall("/slow.onnx")
	defer release()

	tests := []struct {
		id     string
		spec   deploy.Spec
		reason []string
	}{
		{"checksum", linearSpec("checksum", liar), []string{"checksum mismatch", artifacttest.Digest(served), declared}},
		{"404", linearSpec("notfound", missing), []string{"404", "/missing.onnx"}},
		{"refused", linearSpec("refused", refused), []string{"connection refused"}},
		{"slow", linearSpec("slow", slow), []string{"deadline", "/slow.onnx"}},
		{"unavailable", deploy.Spec{Name: "llama", Format: "gguf", Model: good}, []string{"gguf", "not in this test"}},
	}
	if _, err := n.m.Assign("good", linearSpec("good", good), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		if _, err := n.m.Assign(tt.id, tt.spec, deploy.OwnerCentral); err != nil {
			t.Fatalf("%s: %v", tt.id, err)
		}
	}
	waitSettled(t, n.m, "good", deploy.Ready)
	checkInfer(t, n.m, "good", wantLinear(1))
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			st := waitSettled(t, n.m, tt.id, deploy.Failed)
			for _, s := range tt.reason {
				if !strings.Contains(st.Message, s) {
					t.Errorf("reason %q does not mention %q", st.Message, s)
				}
			}
			t.Logf("reason: %s", st.Message)
			if st.MemoryBytes != 0 {
				t.Errorf("a failed deployment is charged %d bytes", st.MemoryBytes)
			}
			// Clients asking for the model see why it is not served.
			_, err := n.m.Model(tt.spec.Name, "")
			wantErr(t, err, deploy.ErrNotReady, "Failed")
		})
	}
	// The healthy one still serves, and the node still takes work.
	checkInfer(t, n.m, "good", wantLinear(1))
	more := srv.Add("/more.onnx", linear(4))
	if _, err := n.m.Assign("more", linearSpec("more", more), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "more", deploy.Ready)
	checkInfer(t, n.m, "more", wantLinear(4))
	tmpEmpty(t, n.dir)

	// The store has each failure and its reason (the last state is stored
	// by the deployment's goroutine, which Close waits for).
	reasons := map[string]string{}
	for _, d := range n.m.List() {
		reasons[d.ID()] = d.Status().Message
	}
	n.closeManager()
	for _, tt := range tests {
		rec, err := n.store.Get(tt.id)
		if err != nil || rec.State != "Failed" || rec.Message != reasons[tt.id] {
			t.Errorf("%s stored: state %q message %q, %v", tt.id, rec.State, rec.Message, err)
		}
	}
}

// Assign is idempotent for the same id and spec, refuses another spec under
// the same id or the same model name under another id, and restarts a
// stopped deployment.
func TestAssignIdempotentAndConflicts(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{})
	a := srv.Add("/m.onnx", linear(1))
	spec := linearSpec("m", a)
	first, err := n.m.Assign("dep-1", spec, deploy.OwnerCentral)
	if err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)

	// The same intent spelled differently (digest case, format case, default
	// version) is the same deployment: nothing is fetched or loaded again.
	same := spec
	same.Format, same.Version, same.Model.SHA256 = "ONNX", "1", strings.ToUpper(a.SHA256)
	for range 3 {
		st, err := n.m.Assign("dep-1", same, deploy.OwnerCentral)
		if err != nil {
			t.Fatal(err)
		}
		if st.ID != "dep-1" || !st.State.Serving() || !st.Created.Equal(first.Created) {
			t.Errorf("re-assign: %v %v created %v (first %v)", st.ID, st.State, st.Created, first.Created)
		}
	}
	if l, h, c := n.loader.loads.Load(), srv.Total.Load(), len(n.m.List()); l != 1 || h != 1 || c != 1 {
		t.Errorf("after idempotent assigns: %d loads, %d downloads, %d deployments; want 1 each", l, h, c)
	}

	other := spec
	other.Version = "2"
	_, err = n.m.Assign("dep-1", other, deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrExists, "dep-1", "different spec")
	_, err = n.m.Assign("dep-2", spec, deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrExists, `"m"`, "dep-1")
	checkInfer(t, n.m, "m", wantLinear(1))

	// Once stopped, the name is free; the same id with the same spec restarts
	// from the cache.
	if _, err := n.m.Stop(t.Context(), "dep-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.m.Assign("dep-1", spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)
	checkInfer(t, n.m, "m", wantLinear(1))
	if l, h := n.loader.loads.Load(), srv.Total.Load(); l != 2 || h != 1 {
		t.Errorf("after restart: %d loads, %d downloads; want 2 and 1", l, h)
	}
	_, err = n.m.Assign("dep-2", spec, deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrExists, "dep-1")
}

// A Central Server that re-assigns a deployment the moment it sees it fail
// must not wedge the manager. (Assign used to wait for the failed run to end
// while holding the manager's lock, which that run needed on its way out.)
func TestReassignOnFailedEvent(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{quiet: true})
	a := artifact.Artifact{URI: srv.URL + "/missing.onnx", SHA256: artifacttest.Digest(linear(1))}
	for i := range 100 {
		id := "dep-" + strconv.Itoa(i)
		// More watchers make each publish longer, and the race likelier.
		var others []*deploy.Watcher
		for range 50 {
			others = append(others, n.m.Watch([]string{id}, false))
		}
		w := n.m.Watch([]string{id}, false)
		if _, err := n.m.Assign(id, linearSpec(id, a), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		for e := range w.C {
			if e.Status.State != deploy.Failed {
				continue
			}
			done := make(chan error, 1)
			go func() { _, err := n.m.Assign(id, linearSpec(id, a), deploy.OwnerCentral); done <- err }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				n.m = nil // wedged: closing it would hang too
				t.Fatalf("iteration %d: Assign after the Failed event hangs", i)
			}
			break
		}
		w.Close()
		for _, o := range others {
			o.Close()
		}
	}
}

// A Central Server polling with Assign re-assigns a failed deployment while
// other clients open watches. Assign used to wait for the failed run to end
// while holding the manager's lock; that run could be publishing its Failed
// status, waiting for the watchers' lock, held by a Watch call waiting for
// the manager's lock: all three stuck.
func TestReassignWhileWatching(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{quiet: true})
	spec := linearSpec("m", artifact.Artifact{URI: srv.URL + "/missing.onnx", SHA256: artifacttest.Digest(linear(1))})
	stop := make(chan struct{})
	time.AfterFunc(time.Second, func() { close(stop) })
	var assigns atomic.Int64
	polled, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := n.m.Assign("dep-1", spec, deploy.OwnerCentral); err != nil {
				t.Error(err)
				return
			}
			assigns.Add(1)
		}
	}()
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n.m.Watch(nil, true).Close()
		}
	}()
	for _, ch := range []chan struct{}{polled, watched} {
		select {
		case <-ch:
		case <-time.After(waitTimeout):
			n.m = nil // wedged: closing it would hang too
			t.Fatalf("Assign and Watch stuck after %d assigns", assigns.Load())
		}
	}
	t.Logf("%d assigns", assigns.Load())
	if d, err := n.m.Get("dep-1"); err != nil || d.Status().Spec.Name != "m" {
		t.Fatalf("dep-1: %v", err)
	}
}

// Invalid specs are refused with ErrInvalidSpec, naming the problem, before
// anything is stored, fetched or loaded.
func TestInvalidSpecs(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true, cfg: deploy.Config{MemoryBudget: 1 << 20, GPUs: 1}})
	good := srv.Add("/m.onnx", linear(1))
	tests := []struct {
		name string
		id   string
		edit func(*deploy.Spec)
		msg  string
	}{
		{"empty id", "", func(*deploy.Spec) {}, "deployment_id is empty"},
		{"empty name", "d", func(s *deploy.Spec) { s.Name = "" }, "model_name is empty"},
		{"unknown format", "d", func(s *deploy.Spec) { s.Format = "tflite" }, `unknown format "tflite"`},
		{"missing uri", "d", func(s *deploy.Spec) { s.Model.URI = "" }, "model.uri is empty"},
		{"http without sha256", "d", func(s *deploy.Spec) { s.Model.SHA256 = "" }, "model.sha256 is required for http URIs"},
		{"bad hex", "d", func(s *deploy.Spec) { s.Model.SHA256 = strings.Repeat("zz", 32) }, "not 64 hex digits"},
		{"short digest", "d", func(s *deploy.Spec) { s.Model.SHA256 = "abcd" }, "not 64 hex digits"},
		{"unsupported scheme", "d", func(s *deploy.Spec) { s.Model.URI = "ftp://example.com/m.onnx" }, `scheme "ftp" not supported`},
		{"memory over budget", "d", func(s *deploy.Spec) { s.Resources.MemoryBytes = 2 << 20 },
			"memory_bytes 2097152 exceeds the node's whole memory budget 1048576"},
		{"too many gpus", "d", func(s *deploy.Spec) { s.Resources.GPUCount = 2 }, "gpu_count 2: this node has 1 GPU(s)"},
		{"negative resources", "d", func(s *deploy.Spec) { s.Resources.CPUThreads = -1 }, "negative"},
		{"unknown provider", "d", func(s *deploy.Spec) { s.Resources.Providers = []string{"tpu"} }, `unknown provider "tpu"`},
		{"several problems", "d", func(s *deploy.Spec) { s.Name, s.Format = "", "" }, "model_name is empty; format is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := linearSpec("m", good)
			tt.edit(&spec)
			_, err := n.m.Assign(tt.id, spec, deploy.OwnerCentral)
			wantErr(t, err, deploy.ErrInvalidSpec, tt.msg)
		})
	}
	recs, err := n.store.List()
	if err != nil || len(recs) != 0 {
		t.Errorf("store holds %d record(s) (%v) after invalid specs", len(recs), err)
	}
	if len(n.m.List()) != 0 || srv.Total.Load() != 0 || n.loader.loads.Load() != 0 {
		t.Errorf("invalid specs left %d deployments, %d downloads, %d loads", len(n.m.List()), srv.Total.Load(), n.loader.loads.Load())
	}
}

// MaxDeployments and MemoryBudget refuse work with ErrNoCapacity and the
// numbers behind the refusal, and free up again when a deployment stops.
func TestAdmission(t *testing.T) {
	srv := artifacttest.New(t)
	t.Run("max deployments", func(t *testing.T) {
		n := newNode(t, nodeOpts{withStore: true, cfg: deploy.Config{MaxDeployments: 2}})
		for i, id := range []string{"a", "b"} {
			if _, err := n.m.Assign(id, linearSpec(id, srv.Add("/"+id, linear(float32(i)))), deploy.OwnerCentral); err != nil {
				t.Fatal(err)
			}
		}
		c := linearSpec("c", srv.Add("/c", linear(7)))
		_, err := n.m.Assign("c", c, deploy.OwnerCentral)
		wantErr(t, err, deploy.ErrNoCapacity, "2 of 2 deployments", "max_deployments")
		if _, err := n.store.Get("c"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("refused deployment stored: %v", err)
		}
		waitSettled(t, n.m, "a", deploy.Ready)
		if _, err := n.m.Stop(t.Context(), "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.m.Assign("c", c, deploy.OwnerCentral); err != nil {
			t.Fatalf("after a stop: %v", err)
		}
		waitSettled(t, n.m, "c", deploy.Ready)
		checkInfer(t, n.m, "c", wantLinear(7))
	})
	t.Run("memory budget", func(t *testing.T) {
		n := newNode(t, nodeOpts{cfg: deploy.Config{MemoryBudget: 1000}})
		spec := func(name string, mem int64) deploy.Spec {
			s := linearSpec(name, srv.Add("/"+name, linear(1)))
			s.Resources.MemoryBytes = mem
			return s
		}
		if _, err := n.m.Assign("a", spec("a", 600), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		if st := waitSettled(t, n.m, "a", deploy.Ready); st.MemoryBytes != 600 {
			t.Errorf("a is charged %d bytes, want the 600 it asked for", st.MemoryBytes)
		}
		_, err := n.m.Assign("b", spec("b", 600), deploy.OwnerCentral)
		wantErr(t, err, deploy.ErrNoCapacity, "needs 600 bytes", "600 of 1000 in use", "400 free", "memory_budget")
		if _, err := n.m.Assign("b", spec("b", 400), deploy.OwnerCentral); err != nil {
			t.Fatalf("exactly the free memory: %v", err)
		}
		waitSettled(t, n.m, "b", deploy.Ready)
		if _, err := n.m.Stop(t.Context(), "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.m.Assign("c", spec("c", 600), deploy.OwnerCentral); err != nil {
			t.Fatalf("after a stop: %v", err)
		}
	})
}

// Stop lets a request in flight finish, refuses new ones, unloads the model,
// and ends Stopped; stopping again is fine, stopping nothing is ErrNotFound.
func TestStopDrains(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true})
	if _, err := n.m.Assign("dep-1", linearSpec("m", srv.Add("/m", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)
	d, err := n.m.Model("m", "")
	if err != nil {
		t.Fatal(err)
	}

	entered, release := n.loader.hold()
	defer release()
	type result struct {
		y   []float32
		err error
	}
	inflight := make(chan result, 1)
	go func() { y, err := inferOn(d); inflight <- result{y, err} }()
	receive(t, entered, "the request to reach the model")

	stopped := make(chan deploy.Status, 1)
	go func() {
		st, err := n.m.Stop(context.Background(), "dep-1")
		if err != nil {
			t.Error(err)
		}
		stopped <- st
	}()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if _, err := n.m.WaitFor(ctx, "dep-1", func(s deploy.Status) bool { return s.State == deploy.Stopping }); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-stopped:
		t.Fatalf("Stop returned (%v) with a request in flight", st.State)
	default:
	}
	if _, err := inferOn(d); !errors.Is(err, deploy.ErrNotReady) {
		t.Errorf("new request while stopping: %v, want ErrNotReady", err)
	}
	if c := n.loader.closes.Load(); c != 0 {
		t.Fatalf("model closed with a request in flight")
	}

	release()
	r := <-inflight
	if r.err != nil || !slices.Equal(r.y, wantLinear(1)) {
		t.Errorf("in-flight request: %v, %v; want %v", r.y, r.err, wantLinear(1))
	}
	var st deploy.Status
	select {
	case st = <-stopped:
	case <-time.After(waitTimeout):
		t.Fatal("Stop did not return after the request finished")
	}
	if st.State != deploy.Stopped || st.MemoryBytes != 0 {
		t.Errorf("after Stop: %v, %d bytes charged", st.State, st.MemoryBytes)
	}
	if c := n.loader.closes.Load(); c != 1 {
		t.Errorf("model closed %d times, want 1", c)
	}
	if _, err := inferOn(d); !errors.Is(err, deploy.ErrNotReady) {
		t.Errorf("request after stop: %v, want ErrNotReady", err)
	}
	_, err = n.m.Model("m", "")
	wantErr(t, err, deploy.ErrNotFound)
	rec, err := n.store.Get("dep-1")
	if err != nil || rec.Desired != store.DesiredStopped || rec.State != "Stopped" {
		t.Errorf("stored: %+v, %v", rec, err)
	}

	again, err := n.m.Stop(t.Context(), "dep-1")
	if err != nil || again.State != deploy.Stopped {
		t.Errorf("second Stop: %v, %v", again.State, err)
	}
	_, err = n.m.Stop(t.Context(), "nope")
	wantErr(t, err, deploy.ErrNotFound, "nope")
}

// TestStopDrainOutlastsNodeDefault: a stop's own drain (StopDeployment's
// drain_timeout) may be longer than the node's DrainTimeout; it was cut at
// the node's.
func TestStopDrainOutlastsNodeDefault(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{cfg: deploy.Config{DrainTimeout: 50 * time.Millisecond}})
	if _, err := n.m.Assign("dep-1", linearSpec("m", srv.Add("/m", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)
	d, err := n.m.Model("m", "")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := n.loader.hold()
	defer release()
	inflight := make(chan error, 1)
	go func() { _, err := inferOn(d); inflight <- err }()
	receive(t, entered, "the request to reach the model")
	stopped := make(chan error, 1)
	go func() { _, err := n.m.StopDrain(context.Background(), "dep-1", time.Minute); stopped <- err }()
	select {
	case err := <-stopped:
		t.Fatalf("StopDrain with a 1 min drain returned (%v) within 6 node drain timeouts, a request still in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	if err := <-inflight; err != nil {
		t.Errorf("in-flight request: %v", err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("StopDrain did not return after the request finished")
	}
}

// Stopping a deployment in the middle of its download cancels the download,
// leaves no partial file, and the deployment stays stopped over a restart.
func TestStopWhileFetching(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n := newNode(t, nodeOpts{dir: dir, withStore: true})
	a := srv.Add("/slow", linear(1))
	release := srv.Stall("/slow")
	defer release()
	if _, err := n.m.Assign("dep-1", linearSpec("m", a), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Stalled:
	case <-time.After(waitTimeout):
		t.Fatal("the download did not start")
	}
	st, err := n.m.Stop(t.Context(), "dep-1")
	if err != nil || st.State != deploy.Stopped {
		t.Fatalf("Stop: %v, %v", st.State, err)
	}
	tmpEmpty(t, n.dir)
	if l := n.loader.loads.Load(); l != 0 {
		t.Errorf("%d loads after a stop during the download", l)
	}
	n.close()

	n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	if d, err := n2.m.Get("dep-1"); err != nil || d.State() != deploy.Stopped {
		t.Fatalf("after restart: %v", err)
	}
	if h := srv.Total.Load(); h != 1 {
		t.Errorf("%d downloads, want 1", h)
	}
}

func receive(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// rss is the process's resident set in bytes, after Go has returned what it
// can to the OS, so that what remains is mostly native (ONNX Runtime) memory.
func rss(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skipf("no /proc/self/statm: %v", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

// Stopping a deployment gives its model's memory back: measured on the
// process's RSS around a 32 MiB model. (With a 16 MiB model glibc keeps the
// freed memory for reuse instead of returning it to the OS; blocks of 32 MiB
// and more are mmapped, and unmapped on free, so the drop is visible.)
func TestStopFreesMemory(t *testing.T) {
	const k, cols = 4096, 2048
	// W[i][j] = (i+j) % 5; rows are windows of one pattern.
	pattern := make([]float32, cols+5)
	for x := range pattern {
		pattern[x] = float32(x % 5)
	}
	w := make([][]float32, k)
	for i := range w {
		w[i] = pattern[i%5 : i%5+cols]
	}
	big := onnxtest.Linear(w, make([]float32, cols))
	w, pattern = nil, nil
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{})

	// Set ONNX Runtime up (library, environment, thread pools) with a tiny
	// model first, so that its one-time cost is not counted.
	if _, err := n.m.Assign("warm", linearSpec("warm", srv.Add("/warm", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "warm", deploy.Ready)
	checkInfer(t, n.m, "warm", wantLinear(1))
	if _, err := n.m.Stop(t.Context(), "warm"); err != nil {
		t.Fatal(err)
	}

	a := srv.Add("/big.onnx", big)
	before := rss(t)
	if _, err := n.m.Assign("big", linearSpec("big", a), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "big", deploy.Ready)
	d, err := n.m.Model("big", "")
	if err != nil {
		t.Fatal(err)
	}
	ones := make([]float32, k)
	for i := range ones {
		ones[i] = 1
	}
	outs, err := d.Infer(t.Context(), []*tensor.Tensor{tensor.FromSlice("X", tensor.FP32, []int64{1, k}, ones)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Y[j] is the sum of column j of W.
	y := tensor.View[float32](outs[0])
	for _, j := range []int{0, 1, 2047} {
		var want float32
		for i := range k {
			want += float32((i + j) % 5)
		}
		if y[j] != want {
			t.Errorf("Y[%d] = %v, want %v", j, y[j], want)
		}
	}
	outs = nil
	loaded := rss(t)
	if _, err := n.m.Stop(t.Context(), "big"); err != nil {
		t.Fatal(err)
	}
	after := rss(t)

	const mib = 1 << 20
	added, freed := loaded-before, loaded-after
	t.Logf("model file %.1f MiB; RSS before load %.1f MiB, loaded %.1f MiB (+%.1f), after stop %.1f MiB (-%.1f)",
		float64(len(big))/mib, float64(before)/mib, float64(loaded)/mib, float64(added)/mib, float64(after)/mib, float64(freed)/mib)
	if added < int64(len(big))/2 {
		t.Fatalf("loading a %d MiB model added only %.1f MiB of RSS: the measurement says nothing", len(big)/mib, float64(added)/mib)
	}
	if freed < added/2 {
		t.Errorf("stop freed %.1f MiB of the %.1f MiB the load added; want at least half", float64(freed)/mib, float64(added)/mib)
	}
}

// A restarted node (new manager over the same store and cache) brings its
// deployments back from the cache without touching the network, and leaves
// the stopped ones stopped.
func TestRestoreAfterRestart(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
	specA := linearSpec("a", srv.Add("/a.onnx", linear(1)))
	specB := linearSpec("b", srv.Add("/b.onnx", linear(2)))
	stA, err := n1.m.Assign("dep-a", specA, deploy.OwnerCentral)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.m.Assign("dep-b", specB, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "dep-a", deploy.Ready)
	waitSettled(t, n1.m, "dep-b", deploy.Ready)
	checkInfer(t, n1.m, "a", wantLinear(1))
	if _, err := n1.m.Stop(t.Context(), "dep-b"); err != nil {
		t.Fatal(err)
	}
	n1.close()
	downloads := srv.Total.Load()

	n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	b, err := n2.m.Get("dep-b")
	if err != nil || b.State() != deploy.Stopped {
		t.Fatalf("dep-b after restore: %v", err)
	}
	st := waitSettled(t, n2.m, "dep-a", deploy.Ready)
	if !st.Created.Equal(stA.Created) || st.Owner != deploy.OwnerCentral {
		t.Errorf("restored dep-a: created %v owner %q; was %v %q", st.Created, st.Owner, stA.Created, stA.Owner)
	}
	checkInfer(t, n2.m, "a", wantLinear(1))
	if d := srv.Total.Load() - downloads; d != 0 {
		t.Errorf("restore downloaded %d artifact(s); want cache hits only", d)
	}
	if l := n2.loader.loads.Load(); l != 1 {
		t.Errorf("%d loads after restore, want 1 (dep-b stays stopped)", l)
	}
	if b.State() != deploy.Stopped {
		t.Errorf("dep-b is %v after restore", b.State())
	}
	_, err = n2.m.Model("b", "")
	wantErr(t, err, deploy.ErrNotFound)

	// The Central Server re-sends what it assigned: the restored spec is
	// the same deployment, and a re-assign of the stopped one restarts it.
	if st, err := n2.m.Assign("dep-a", specA, deploy.OwnerCentral); err != nil || !st.State.Serving() {
		t.Errorf("re-assign after restart: %v, %v", st.State, err)
	}
	if _, err := n2.m.Assign("dep-b", specB, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n2.m, "dep-b", deploy.Ready)
	checkInfer(t, n2.m, "b", wantLinear(2))
	if l, d := n2.loader.loads.Load(), srv.Total.Load()-downloads; l != 2 || d != 0 {
		t.Errorf("%d loads, %d downloads; want 2 and 0", l, d)
	}
}

// Fifty assignments at once all come up, never more than two downloading or
// two loading at a time, and each watcher sees each deployment's states in
// order.
func TestConcurrentAssigns(t *testing.T) {
	const count = 50
	srv := artifacttest.New(t)
	srv.Delay = 20 * time.Millisecond
	n := newNode(t, nodeOpts{cfg: deploy.Config{MaxConcurrentFetches: 2, MaxConcurrentLoads: 2}})
	n.loader.delay = 10 * time.Millisecond

	w := n.m.Watch(nil, false)
	defer w.Close()
	seen := map[string][]deploy.State{}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for e := range w.C {
			s := seen[e.Status.ID]
			if len(s) == 0 || s[len(s)-1] != e.Status.State {
				seen[e.Status.ID] = append(s, e.Status.State)
			}
		}
	}()

	var wg sync.WaitGroup
	for i := range count {
		id := fmt.Sprintf("m%02d", i)
		a := srv.Add("/"+id+".onnx", linear(float32(i)))
		wg.Go(func() {
			if _, err := n.m.Assign(id, linearSpec(id, a), deploy.OwnerCentral); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range count {
		id := fmt.Sprintf("m%02d", i)
		waitSettled(t, n.m, id, deploy.Ready)
		checkInfer(t, n.m, id, wantLinear(float32(i)))
	}
	t.Logf("most downloads at once %d, most loads at once %d", srv.MaxInflight.Load(), n.loader.maxRunning.Load())
	if m := srv.MaxInflight.Load(); m > 2 || m < 2 {
		t.Errorf("most downloads at once = %d, want 2 (the bound, reached)", m)
	}
	if m := n.loader.maxRunning.Load(); m > 2 || m < 2 {
		t.Errorf("most loads at once = %d, want 2 (the bound, reached)", m)
	}
	if h, l := srv.Total.Load(), n.loader.loads.Load(); h != count || l != count {
		t.Errorf("%d downloads, %d loads; want %d each", h, l, count)
	}

	w.Close()
	<-watched
	if w.Overflowed() {
		t.Fatal("the watcher fell behind")
	}
	want := []deploy.State{deploy.Pending, deploy.Fetching, deploy.Loading, deploy.Ready, deploy.Running}
	for id, s := range seen {
		if !slices.Equal(s, want) && !slices.Equal(s, want[:4]) {
			t.Errorf("%s: watcher saw %v, want %v", id, s, want)
		}
	}
	if len(seen) != count {
		t.Errorf("watcher saw %d deployments, want %d", len(seen), count)
	}
}

// Every watcher sees each deployment's states in the order they happened,
// starting with Pending, and the store ends with the last one. (Statuses
// used to be published by whichever goroutine got there first, so a watcher
// could see Pending after Loading.)
func TestEventsInOrder(t *testing.T) {
	const count = 60
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true})
	w := n.m.Watch(nil, false)
	a := srv.Add("/m", linear(1))
	for i := range count {
		id := "d" + strconv.Itoa(i)
		if _, err := n.m.Assign(id, linearSpec(id, a), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
	}
	for i := range count {
		waitSettled(t, n.m, "d"+strconv.Itoa(i), deploy.Ready)
	}
	n.closeManager() // every deployment goroutine has published and stored its last state
	seen := map[string][]deploy.State{}
	for e := range w.C {
		seen[e.Status.ID] = append(seen[e.Status.ID], e.Status.State)
	}
	if w.Overflowed() || len(seen) != count {
		t.Fatalf("watcher overflowed %v, saw %d deployments", w.Overflowed(), len(seen))
	}
	for id, s := range seen {
		if s[0] != deploy.Pending || s[len(s)-1] != deploy.Ready || !slices.IsSorted(s) {
			t.Errorf("%s: events %v", id, s)
		}
		if rec, err := n.store.Get(id); err != nil || rec.State != "Ready" {
			t.Errorf("%s: stored state %q, %v", id, rec.State, err)
		}
	}
}

// A watcher gets a snapshot first, then live events; one that never reads
// is dropped once its buffer is full, without ever blocking the manager or
// the other watchers.
func TestWatch(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{})
	spec1 := linearSpec("one", srv.Add("/1", linear(1)))
	if _, err := n.m.Assign("dep-1", spec1, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)

	all := n.m.Watch(nil, true)
	only2 := n.m.Watch([]string{"dep-2"}, true)
	next := func(w *deploy.Watcher) deploy.Event {
		t.Helper()
		select {
		case e, ok := <-w.C:
			if !ok {
				t.Fatal("watch ended")
			}
			return e
		case <-time.After(waitTimeout):
			t.Fatal("no event")
		}
		panic("unreachable")
	}
	if e := next(all); !e.Snapshot || e.Status.ID != "dep-1" || e.Status.State != deploy.Ready {
		t.Fatalf("first event: snapshot %v %s %v", e.Snapshot, e.Status.ID, e.Status.State)
	}
	if len(only2.C) != 0 {
		t.Fatalf("a watcher of dep-2 got %d events before dep-2 existed", len(only2.C))
	}

	if _, err := n.m.Assign("dep-2", linearSpec("two", srv.Add("/2", linear(2))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*deploy.Watcher{all, only2} {
		var states []deploy.State
		for len(states) == 0 || states[len(states)-1] != deploy.Ready {
			e := next(w)
			if e.Snapshot || e.Status.ID != "dep-2" {
				t.Fatalf("live event: snapshot %v id %s", e.Snapshot, e.Status.ID)
			}
			if len(states) == 0 || states[len(states)-1] != e.Status.State {
				states = append(states, e.Status.State)
			}
		}
		if want := []deploy.State{deploy.Pending, deploy.Fetching, deploy.Loading, deploy.Ready}; !slices.Equal(states, want) {
			t.Errorf("live states %v, want %v", states, want)
		}
	}
	all.Close()
	only2.Close()
	if _, ok := <-all.C; ok {
		t.Error("C still open after Close")
	}

	// Each idempotent Assign publishes the deployment's status once.
	slow := n.m.Watch(nil, false) // never read
	fast := n.m.Watch([]string{"dep-1"}, false)
	const batches, perBatch = 5, 300 // 1500 events > the 1024 a watcher may lag
	var got atomic.Int64
	caughtUp := make(chan struct{}, batches) // one per batch the fast reader has read
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for range fast.C {
			if got.Add(1)%perBatch == 0 {
				caughtUp <- struct{}{}
			}
		}
	}()
	burst := make(chan error, 1)
	go func() {
		for range batches {
			for range perBatch {
				if _, err := n.m.Assign("dep-1", spec1, deploy.OwnerCentral); err != nil {
					burst <- err
					return
				}
			}
			<-caughtUp // only the slow watcher lags
		}
		burst <- nil
	}()
	select {
	case err := <-burst:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("publishing to a watcher that does not read blocks the manager")
	}
	buffered := 0
	for range slow.C {
		buffered++
	}
	if !slow.Overflowed() || buffered == 0 || buffered >= batches*perBatch {
		t.Errorf("slow watcher: overflowed %v after %d buffered events", slow.Overflowed(), buffered)
	}
	if fast.Overflowed() || got.Load() != batches*perBatch {
		t.Errorf("fast watcher: overflowed %v, %d events, want %d", fast.Overflowed(), got.Load(), batches*perBatch)
	}
	fast.Close()
	<-readerDone
	slow.Close() // closing a dropped watcher is fine

	// The manager goes on as before.
	checkInfer(t, n.m, "one", wantLinear(1))
	if _, err := n.m.Assign("dep-3", linearSpec("three", srv.Add("/3", linear(3))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-3", deploy.Ready)
}

// The manager's Close leaves what is stored alone; Watch and Assign after it
// answer at once.
func TestCloseThenUse(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true})
	if _, err := n.m.Assign("dep-1", linearSpec("m", srv.Add("/m", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)
	m := n.m
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	n.m = nil
	if _, ok := <-m.Watch(nil, true).C; ok {
		t.Error("Watch after Close delivered an event")
	}
	_, err := m.Assign("dep-2", linearSpec("m2", srv.Add("/m2", linear(2))), deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrClosed, "shutting down")
	rec, err := n.store.Get("dep-1")
	if err != nil || rec.Desired != store.DesiredRunning {
		t.Errorf("stored after Close: %+v, %v", rec, err)
	}
}
