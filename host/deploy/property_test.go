package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"go.uber.org/goleak"
)

// propSeeds are the seeds the randomized test runs in CI (11 found that a
// restart at its limits let a failed deployment take a serving one's place:
// TestRestoreAdmitsServingBeforeFailed); CYXWIZ_PROP_SEED
// (a number) runs that one instead, CYXWIZ_PROP_SEEDS=n runs n random ones;
// CYXWIZ_PROP_STEPS sets the steps of each run.
var propSeeds = []uint64{11}

// TestPropertyConcurrentLifecycle drives a real Manager over a real store,
// cache, ONNX Runtime and guest runtime through random interleavings of
// Assign (same spec, other spec, other ids, one model name on two ids,
// guest swaps, other owners), Stop/StopDrain, Infer, Watch and restarts on
// the same directory, and checks after each step that: at most one
// deployment holds a model name; every settled state is one the operations
// allow; the store agrees with memory (desired, owner, spec, state); every
// watcher saw each deployment's changes in order, through allowed
// transitions, ending on its final status; a restart restores exactly the
// serving, stopped and failed sets; no goroutine is left behind.
func TestPropertyConcurrentLifecycle(t *testing.T) {
	seeds := propSeeds
	if s := os.Getenv("CYXWIZ_PROP_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = []uint64{v}
	} else if s := os.Getenv("CYXWIZ_PROP_SEEDS"); s != "" {
		n, _ := strconv.Atoi(s)
		seeds = nil
		for range n {
			seeds = append(seeds, rand.Uint64()%1_000_000)
		}
	}
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	post := guesttest.Build(t, "guests/examples/cls-post")
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs after the node's close
			p := newPropWorld(t, lib, post, seed)
			steps := 35
			if s, err := strconv.Atoi(os.Getenv("CYXWIZ_PROP_STEPS")); err == nil {
				steps = s
			}
			p.run(t, steps)
		})
	}
}

// propWorld is one randomized run: a node (restarted now and then on the
// same directory) and the artifacts its specs use.
type propWorld struct {
	rng  *rand.Rand
	seed uint64
	dir  string
	lib  string
	rt   *guest.Runtime
	log  *slog.Logger

	models map[string]float32 // model URI → bias; bad models are absent
	bad    artifact.Artifact
	good   []artifact.Artifact
	posts  []artifact.Artifact // postprocess guest variants

	// maxDeployments is limits.max_deployments: 0 or 2 (of three ids).
	maxDeployments int

	n        *propNode
	watchers []*propWatcher
}

type propNode struct {
	m     *deploy.Manager
	cache *artifact.Cache
	store *store.Store
}

func newPropWorld(t *testing.T, lib string, post []byte, seed uint64) *propWorld {
	t.Helper()
	p := &propWorld{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), seed: seed, dir: t.TempDir(), lib: lib,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), models: map[string]float32{}}
	rt, err := guest.NewRuntime(context.Background(), guest.Config{
		CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache"), MemoryLimitPages: 512, CallTimeout: 5 * time.Second,
	}, p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.rt = rt
	p.maxDeployments = 2 * p.rng.IntN(2)
	t.Cleanup(func() { rt.Close(context.Background()) })
	file := func(name string, b []byte) artifact.Artifact {
		path := filepath.Join(p.dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return artifact.Artifact{URI: "file://" + path}
	}
	for i, bias := range []float32{1, 2} {
		a := file(fmt.Sprintf("m%d.onnx", i), linear(bias))
		p.models[a.URI] = bias
		p.good = append(p.good, a)
	}
	p.bad = file("bad.onnx", []byte("not an onnx model"))
	p.posts = []artifact.Artifact{file("post1.wasm", variant(post, '1')), file("post2.wasm", variant(post, '2'))}
	p.start(t)
	t.Cleanup(func() { p.stopNode(t) })
	return p
}

// start opens the node on p.dir and restores what it stored.
func (p *propWorld) start(t *testing.T) {
	t.Helper()
	c, err := artifact.New(filepath.Join(p.dir, "artifacts"), 0, p.log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(p.dir, "deployments.db"))
	if err != nil {
		t.Fatal(err)
	}
	// Loads take a while, so that stops, assigns and closes land in them.
	reg := loaders.NewRegistry(&countingLoader{Loader: onnx.New(onnx.Config{LibraryPath: p.lib}), delay: 20 * time.Millisecond})
	m := deploy.NewManager(deploy.Config{Guests: p.rt, GuestInstances: 1, DrainTimeout: 2 * time.Second, MaxDeployments: p.maxDeployments,
		Load: loaders.Options{IntraOpThreads: 1, InterOpThreads: 1}}, reg, c, st, p.log)
	p.n = &propNode{m: m, cache: c, store: st}
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
}

func (p *propWorld) stopNode(t *testing.T) {
	t.Helper()
	if p.n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.n.m.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}
	for _, w := range p.watchers {
		w.w.Close()
	}
	p.watchers = nil
	p.n.cache.Close()
	p.n.store.Close()
	p.n = nil
}

var (
	propIDs    = []string{"a", "b", "c"}
	propNames  = []string{"m1", "m2", "m3"}
	propOwners = []string{deploy.OwnerCentral, deploy.OwnerCentral, deploy.OwnerCentral, "central-2"}
)

// spec picks a random spec: a model name, a model (bad one time in four),
// and no guest or one of the postprocess guests with one of two configs.
func (p *propWorld) spec() deploy.Spec {
	s := deploy.Spec{Name: propNames[p.rng.IntN(len(propNames))], Format: "onnx", Model: p.good[p.rng.IntN(len(p.good))]}
	if p.rng.IntN(4) == 0 {
		s.Model = p.bad
	}
	if g := p.rng.IntN(3); g > 0 {
		s.Guests = []deploy.Guest{{Name: "post", Roles: []string{"postprocess"}, Artifact: p.posts[g-1]}}
		s.Config = map[string]string{"labels": []string{"a,b", "x,y"}[p.rng.IntN(2)]}
	}
	return s
}

// step is one operation; ops of one step run at once.
type step struct {
	desc string
	run  func(t *testing.T)
}

func (p *propWorld) run(t *testing.T, steps int) {
	m := func() *deploy.Manager { return p.n.m }
	p.addWatcher(t, nil, true)
	last := map[string]deploy.Spec{}
	for i := range steps {
		if i > 0 && p.rng.IntN(8) == 0 {
			t.Logf("seed %d step %d: restart", p.seed, i)
			p.restart(t)
			continue
		}
		var ops []step
		closing := false
		for range 1 + p.rng.IntN(4) {
			id := propIDs[p.rng.IntN(len(propIDs))]
			switch k := p.rng.IntN(11); {
			case k < 4:
				spec := p.spec()
				if prev, ok := last[id]; ok && p.rng.IntN(2) == 0 {
					// The id's last spec, or it with other guests:
					// idempotent assigns and guest swaps. (The last one
					// asked for, not the one the node has, so that the
					// seed alone decides the operations.)
					other := spec
					spec = prev
					if p.rng.IntN(2) == 0 {
						spec.Guests, spec.Config = other.Guests, other.Config
					}
				}
				last[id] = spec
				owner := propOwners[p.rng.IntN(len(propOwners))]
				ops = append(ops, step{fmt.Sprintf("assign %s %s(%s,%d guests,%v) by %s", id, spec.Name, filepath.Base(spec.Model.URI), len(spec.Guests), spec.Config, owner),
					func(t *testing.T) { p.assign(t, id, spec, owner) }})
			case k < 6:
				drain := time.Duration(p.rng.IntN(2)) * 50 * time.Millisecond
				ops = append(ops, step{fmt.Sprintf("stop %s drain %v", id, drain), func(t *testing.T) {
					if _, err := m().StopDrain(context.Background(), id, drain); err != nil && !errors.Is(err, deploy.ErrNotFound) {
						t.Errorf("stop %s: %v", id, err)
					}
				}})
			case k < 9:
				name := propNames[p.rng.IntN(len(propNames))]
				ops = append(ops, step{"infer " + name, func(t *testing.T) { p.infer(t, name) }})
			case k == 10 && !closing:
				closing = true
				ops = append(ops, step{"close", func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					if err := m().Close(ctx); err != nil {
						t.Errorf("close: %v", err)
					}
				}})
			case k == 10:
			default:
				var ids []string
				if p.rng.IntN(2) == 0 {
					ids = []string{id}
				}
				snap := p.rng.IntN(2) == 0
				ops = append(ops, step{fmt.Sprintf("watch %v snapshot %v", ids, snap), func(t *testing.T) { p.addWatcher(t, ids, snap) }})
			}
		}
		descs := make([]string, len(ops))
		var wg sync.WaitGroup
		start := time.Now()
		for j, op := range ops {
			descs[j] = op.desc
			wg.Add(1)
			go func() {
				defer wg.Done()
				op.run(t)
			}()
		}
		wg.Wait()
		t.Logf("seed %d step %d (%v): %s", p.seed, i, time.Since(start).Round(time.Millisecond), strings.Join(descs, " | "))
		if closing {
			p.restartClosed(t)
			if t.Failed() {
				t.Fatalf("seed %d: property broken at step %d", p.seed, i)
			}
			continue
		}
		p.settle(t)
		p.checkWatchers(t) // also waits for the last changes to be stored
		p.check(t)
		if t.Failed() {
			t.Fatalf("seed %d: property broken at step %d", p.seed, i)
		}
	}
	p.restart(t)
}

func (p *propWorld) assign(t *testing.T, id string, spec deploy.Spec, owner string) {
	_, err := p.n.m.Assign(id, spec, owner)
	switch {
	case err == nil, errors.Is(err, deploy.ErrExists), errors.Is(err, deploy.ErrNoCapacity):
	case errors.Is(err, deploy.ErrClosed):
		// The node shut down meanwhile.
	case errors.Is(err, deploy.ErrNotReady), errors.Is(err, context.Canceled):
		// A swap that a Stop ended, or that found the deployment going.
	default:
		t.Errorf("assign %s: %v", id, err)
	}
}

func (p *propWorld) infer(t *testing.T, name string) {
	d, err := p.n.m.Model(name, "")
	if err != nil {
		if !errors.Is(err, deploy.ErrNotFound) && !errors.Is(err, deploy.ErrNotReady) {
			t.Errorf("Model(%s): %v", name, err)
		}
		return
	}
	bias, good := p.models[d.Status().Spec.Model.URI]
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	outs, err := d.Infer(ctx, []*tensor.Tensor{x}, nil)
	switch {
	case errors.Is(err, deploy.ErrNotReady), errors.Is(err, engine.ErrClosed):
		return // stopped meanwhile
	case err != nil:
		t.Errorf("infer %s on %s: %v", name, d.ID(), err)
		return
	case !good:
		t.Errorf("infer %s on %s served by a bad model", name, d.ID())
	}
	if len(outs) == 1 && outs[0].DType == tensor.FP32 {
		if got := tensor.View[float32](outs[0]); !slices.Equal(got, wantLinear(bias)) {
			t.Errorf("infer %s on %s: %v, want %v", name, d.ID(), got, wantLinear(bias))
		}
	}
}

// settle waits until every deployment is serving, stopped or failed.
func (p *propWorld) settle(t *testing.T) {
	t.Helper()
	for _, d := range p.n.m.List() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		_, err := p.n.m.WaitFor(ctx, d.ID(), deploy.Settled)
		cancel()
		if err != nil {
			t.Fatalf("seed %d: %s never settled: %v (%v)", p.seed, d.ID(), err, d.Status().State)
		}
	}
}

// check verifies the invariants on a settled node.
func (p *propWorld) check(t *testing.T) {
	t.Helper()
	m, st := p.n.m, p.n.store
	holders := map[string][]string{}
	ids := map[string]bool{}
	for _, d := range m.List() {
		s := d.Status()
		ids[s.ID] = true
		if s.State.Active() {
			holders[s.Spec.Name] = append(holders[s.Spec.Name], s.ID)
		}
		_, good := p.models[s.Spec.Model.URI]
		switch s.State {
		case deploy.Ready, deploy.Running:
			if !good {
				t.Errorf("%s serves a bad model", s.ID)
			}
		case deploy.Stopped:
		case deploy.Failed:
			if good && !strings.Contains(s.Message, "not restored: ") {
				t.Errorf("%s failed with a good model: %s", s.ID, s.Message)
			}
		default:
			t.Errorf("%s is %v after settling", s.ID, s.State)
		}
		rec, err := st.Get(s.ID)
		if err != nil {
			t.Errorf("%s (%v) is not stored: %v", s.ID, s.State, err)
			continue
		}
		wantDesired := store.DesiredRunning
		if s.State == deploy.Stopped {
			wantDesired = store.DesiredStopped
		}
		if rec.Desired != wantDesired || rec.Owner != s.Owner || rec.State != s.State.String() || rec.Message != s.Message {
			t.Errorf("%s: stored desired %q owner %q state %q (%s); memory %v owner %q (%s)",
				s.ID, rec.Desired, rec.Owner, rec.State, rec.Message, s.State, s.Owner, s.Message)
		}
		var spec deploy.Spec
		if err := json.Unmarshal(rec.Spec, &spec); err != nil || !spec.Equal(s.Spec) {
			t.Errorf("%s: stored spec %+v (%v), memory %+v", s.ID, spec, err, s.Spec)
		}
	}
	for name, h := range holders {
		if len(h) > 1 {
			t.Errorf("model name %s held by %v", name, h)
		}
	}
	recs, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if !ids[r.ID] {
			t.Errorf("stored %s is not listed", r.ID)
		}
	}
}

// snapshotSets is the node's settled deployments by state class.
func (p *propWorld) snapshotSets() map[string]string {
	out := map[string]string{}
	for _, d := range p.n.m.List() {
		s := d.Status()
		class := s.State.String()
		if s.State.Serving() {
			class = "serving"
		}
		out[s.ID] = class + " " + s.Spec.Name + " " + s.Owner
	}
	return out
}

// restart checks the watchers, closes the node and opens it again on the
// same directory: the same deployments come back in the same classes.
func (p *propWorld) restart(t *testing.T) {
	t.Helper()
	p.settle(t)
	p.checkWatchers(t)
	p.check(t)
	before := p.snapshotSets()
	p.stopNode(t)
	p.start(t)
	p.addWatcher(t, nil, true)
	p.settle(t)
	p.checkWatchers(t)
	after := p.snapshotSets()
	for id, b := range before {
		// A failed deployment tries again: it may serve now.
		if a := after[id]; a != b && !(strings.HasPrefix(b, "Failed ") && strings.HasPrefix(a, "serving ")) {
			t.Errorf("restart: %s was %q, now %q", id, b, a)
		}
	}
	for id, a := range after {
		if _, ok := before[id]; !ok {
			t.Errorf("restart: %s appeared (%q)", id, a)
		}
	}
	p.check(t)
	if t.Failed() {
		t.Fatalf("seed %d: property broken at restart", p.seed)
	}
}

// restartClosed starts the node again after a Close that came in the
// middle of other operations: every stored deployment comes back as its
// record says (stopped, or serving unless its model is bad or another
// deployment has its name), and the invariants hold.
func (p *propWorld) restartClosed(t *testing.T) {
	t.Helper()
	recs, err := p.n.store.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range p.n.m.List() {
		s := d.Status()
		i := slices.IndexFunc(recs, func(r store.Record) bool { return r.ID == s.ID })
		if i < 0 {
			t.Errorf("%s (%v) is not stored", s.ID, s.State)
			continue
		}
		if stopped := recs[i].Desired == store.DesiredStopped; stopped != (s.State == deploy.Stopped || s.State == deploy.Stopping) {
			t.Errorf("closed mid-way: %s is %v (%s), stored desired %s", s.ID, s.State, s.Message, recs[i].Desired)
		}
	}
	p.stopNode(t)
	p.start(t)
	p.addWatcher(t, nil, true)
	p.settle(t)
	p.checkWatchers(t)
	p.check(t)
	for _, r := range recs {
		d, err := p.n.m.Get(r.ID)
		if err != nil {
			t.Errorf("stored %s not restored: %v", r.ID, err)
			continue
		}
		s := d.Status()
		if want := r.Desired == store.DesiredStopped; want != (s.State == deploy.Stopped) {
			t.Errorf("restored %s is %v (%s); stored desired %s", r.ID, s.State, s.Message, r.Desired)
		}
	}
}

// propWatcher collects a watcher's events as they come.
type propWatcher struct {
	ids  []string
	snap bool
	w    *deploy.Watcher

	mu     sync.Mutex
	events []deploy.Status
	snaps  map[string]bool
	wake   chan struct{}
	done   chan struct{}
}

func (p *propWorld) addWatcher(t *testing.T, ids []string, snap bool) {
	w := &propWatcher{ids: ids, snap: snap, w: p.n.m.Watch(ids, snap), snaps: map[string]bool{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for e := range w.w.C {
			w.mu.Lock()
			w.events = append(w.events, e.Status)
			if e.Snapshot {
				w.snaps[e.Status.ID] = true
			}
			w.mu.Unlock()
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { w.w.Close(); <-w.done })
	// Only the watchers of this node's life are checked.
	p.addTo(w)
}

var propWatchMu sync.Mutex

func (p *propWorld) addTo(w *propWatcher) {
	propWatchMu.Lock()
	defer propWatchMu.Unlock()
	p.watchers = append(p.watchers, w)
}

// allowed reports whether a deployment may go from a to b in one event.
func allowed(a, b deploy.State) bool {
	switch {
	case a == b:
		return true
	case b == deploy.Failed:
		return a != deploy.Stopped && a != deploy.Stopping
	case b == deploy.Pending:
		return a == deploy.Stopped || a == deploy.Failed // a new run of the id
	case b == deploy.Stopping:
		return a.Active()
	case b == deploy.Stopped:
		return a == deploy.Stopping || a == deploy.Failed
	case a == deploy.Pending:
		return b == deploy.Fetching
	case a == deploy.Fetching:
		return b == deploy.Loading
	case a == deploy.Loading:
		return b == deploy.Ready
	case a == deploy.Ready:
		return b == deploy.Running
	}
	return false
}

// checkWatchers waits until each watcher's last event of each deployment it
// saw is that deployment's current status, and checks the order.
func (p *propWorld) checkWatchers(t *testing.T) {
	t.Helper()
	propWatchMu.Lock()
	ws := slices.Clone(p.watchers)
	propWatchMu.Unlock()
	final := map[string]deploy.Status{}
	for _, d := range p.n.m.List() {
		final[d.ID()] = d.Status()
	}
	deadline := time.After(waitTimeout)
	for wi, w := range ws {
		for {
			w.mu.Lock()
			last := map[string]deploy.Status{}
			var problems []string
			for _, e := range w.events {
				if prev, ok := last[e.ID]; ok {
					// An idempotent Assign sends the current status again.
					if e.Seq < prev.Seq || e.Seq == prev.Seq && e.State != prev.State {
						problems = append(problems, fmt.Sprintf("%s: seq %d (%v) after %d (%v)", e.ID, e.Seq, e.State, prev.Seq, prev.State))
					}
					if !allowed(prev.State, e.State) {
						problems = append(problems, fmt.Sprintf("%s: %v (%s) → %v (%s)", e.ID, prev.State, prev.Message, e.State, e.Message))
					}
				}
				last[e.ID] = e
			}
			var pending []string
			for id, f := range final {
				if len(w.ids) > 0 && !slices.Contains(w.ids, id) {
					continue
				}
				l, ok := last[id]
				if !ok && !w.snap {
					continue // never changed while watched
				}
				if !ok || l.Seq != f.Seq || l.State != f.State || l.Message != f.Message || !l.Spec.Equal(f.Spec) ||
					l.Owner != f.Owner || !l.Created.Equal(f.Created) || !l.Updated.Equal(f.Updated) || l.MemoryBytes != f.MemoryBytes || l.Info.Platform != f.Info.Platform {
					pending = append(pending, fmt.Sprintf("%s: last event %v seq %d (%s) %s %d %v, final %v seq %d (%s) %s %d %v", id,
						l.State, l.Seq, l.Message, l.Owner, l.MemoryBytes, l.Updated, f.State, f.Seq, f.Message, f.Owner, f.MemoryBytes, f.Updated))
				}
			}
			overflowed := w.w.Overflowed()
			w.mu.Unlock()
			for _, pr := range problems {
				t.Errorf("watcher %d (ids %v snapshot %v): %s", wi, w.ids, w.snap, pr)
			}
			if overflowed {
				t.Errorf("watcher %d overflowed", wi)
			}
			if len(pending) == 0 || len(problems) > 0 || overflowed {
				break
			}
			select {
			case <-w.wake:
				continue
			case <-deadline:
				t.Errorf("watcher %d (ids %v snapshot %v) never got the final statuses: %s", wi, w.ids, w.snap, strings.Join(pending, "; "))
			}
			break
		}
	}
}
