package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// waitTimeout bounds every wait for a deployment to settle.
const waitTimeout = 20 * time.Second

// --- loaders -----------------------------------------------------------------

// countingLoader wraps a real loader: it counts Load calls and the most that
// ran at once, can stretch each Load by delay, and wraps every model so that
// Infer can be held at a gate and Close is counted.
type countingLoader struct {
	loaders.Loader
	delay time.Duration

	loads, running, maxRunning atomic.Int64
	closes                     atomic.Int64

	mu      sync.Mutex
	gate    chan struct{} // when set, each Infer waits for it to close
	entered chan struct{} // receives when an Infer reaches the gate
}

func (l *countingLoader) Load(ctx context.Context, path string, opts loaders.Options) (loaders.Model, error) {
	l.loads.Add(1)
	n := l.running.Add(1)
	defer l.running.Add(-1)
	for {
		m := l.maxRunning.Load()
		if n <= m || l.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	if l.delay > 0 {
		select {
		case <-time.After(l.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	m, err := l.Loader.Load(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	return &countedModel{Model: m, l: l}, nil
}

// hold makes every later Infer wait until the returned release is called.
// entered receives once per Infer that reached the gate.
func (l *countingLoader) hold() (entered <-chan struct{}, release func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gate, l.entered = make(chan struct{}), make(chan struct{}, 16)
	gate := l.gate
	return l.entered, sync.OnceFunc(func() { close(gate) })
}

type countedModel struct {
	loaders.Model
	l      *countingLoader
	closed atomic.Bool
}

func (m *countedModel) Infer(ctx context.Context, in []*tensor.Tensor, names []string) ([]*tensor.Tensor, error) {
	m.l.mu.Lock()
	gate, entered := m.l.gate, m.l.entered
	m.l.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return m.Model.Infer(ctx, in, names)
}

func (m *countedModel) Close() error {
	if !m.closed.Swap(true) {
		m.l.closes.Add(1)
	}
	return m.Model.Close()
}

// --- manager -------------------------------------------------------------------

// node is a Manager under test and what it was built from.
type node struct {
	m      *deploy.Manager
	loader *countingLoader
	cache  *artifact.Cache
	store  *store.Store
	dir    string // holds artifacts/ (the cache) and deployments.db (the store)
}

// nodeOpts says how to build a node.
type nodeOpts struct {
	cfg       deploy.Config
	dir       string // cache and store directory; a new temp dir when ""
	withStore bool
	quiet     bool // discard the log (for tests that fail deployments by the hundred)
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newNode builds a manager over the real ONNX loader (counted), a real
// artifact cache and, when asked, a real bbolt store. Cleanup closes them in
// reverse order unless the test did already.
func newNode(t *testing.T, o nodeOpts) *node {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	n := &node{loader: &countingLoader{Loader: onnx.New(onnx.Config{LibraryPath: lib})}, dir: o.dir}
	if n.dir == "" {
		n.dir = t.TempDir()
	}
	log := testLog(t)
	if o.quiet {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := artifact.New(filepath.Join(n.dir, "artifacts"), 0, log)
	if err != nil {
		t.Fatal(err)
	}
	n.cache = c
	if o.withStore {
		st, err := store.Open(filepath.Join(n.dir, "deployments.db"))
		if err != nil {
			t.Fatal(err)
		}
		n.store = st
	}
	if o.cfg.Load.IntraOpThreads == 0 {
		o.cfg.Load.IntraOpThreads = 1
		o.cfg.Load.InterOpThreads = 1
	}
	n.m = deploy.NewManager(o.cfg, loaders.NewRegistry(n.loader,
		loaders.Unsupported{Name: "gguf", Reason: "not in this test"}), n.cache, n.store, log)
	t.Cleanup(n.close)
	return n
}

// close shuts the manager, then the cache and store; it may be called twice.
func (n *node) close() {
	n.closeManager()
	if n.cache != nil {
		n.cache.Close()
		n.cache = nil
	}
	if n.store != nil {
		n.store.Close()
		n.store = nil
	}
}

// closeManager shuts the manager only: once it returns, every deployment
// goroutine has ended and stored its last state.
func (n *node) closeManager() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n.m != nil {
		n.m.Close(ctx)
		n.m = nil
	}
}

// waitSettled waits until id is serving, failed or stopped, and checks that
// it is in state want.
func waitSettled(t *testing.T, m *deploy.Manager, id string, want deploy.State) deploy.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	st, err := m.WaitFor(ctx, id, deploy.Settled)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	if st.State != want && !(want == deploy.Ready && st.State == deploy.Running) {
		t.Fatalf("%s: state %v (%s), want %v", id, st.State, st.Message, want)
	}
	return st
}

// --- models --------------------------------------------------------------------

// linear is onnxtest's linear model with bias (b, -b): X=[1,1,1] gives
// Y=[9+b, 12-b].
func linear(b float32) []byte {
	return onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{b, -b})
}

func wantLinear(b float32) []float32 { return []float32{9 + b, 12 - b} }

func linearSpec(name string, a artifact.Artifact) deploy.Spec {
	return deploy.Spec{Name: name, Format: "onnx", Model: a}
}

// infer runs X=[1,1,1] through the deployment serving name.
func infer(t *testing.T, m *deploy.Manager, name string) []float32 {
	t.Helper()
	d, err := m.Model(name, "")
	if err != nil {
		t.Fatalf("Model(%q): %v", name, err)
	}
	out, err := inferOn(d)
	if err != nil {
		t.Fatalf("infer %s: %v", name, err)
	}
	return out
}

func inferOn(d *deploy.Deployment) ([]float32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	outs, err := d.Infer(ctx, []*tensor.Tensor{x}, nil)
	if err != nil {
		return nil, err
	}
	if len(outs) != 1 {
		return nil, fmt.Errorf("%d outputs", len(outs))
	}
	return slices.Clone(tensor.View[float32](outs[0])), nil
}

func checkInfer(t *testing.T, m *deploy.Manager, name string, want []float32) {
	t.Helper()
	if got := infer(t, m, name); !slices.Equal(got, want) {
		t.Errorf("%s: Y = %v, want %v", name, got, want)
	}
}

// --- assertions ----------------------------------------------------------------

func wantErr(t *testing.T, err, target error, substrs ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want %v", err, target)
	}
	for _, s := range substrs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

// tmpEmpty fails if the cache left partial downloads behind.
func tmpEmpty(t *testing.T, cacheDir string) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(cacheDir, "artifacts", "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if len(des) > 0 {
		t.Errorf("cache tmp/ holds %d file(s), e.g. %s", len(des), des[0].Name())
	}
}

// budgetHold is a node with a 1000-byte memory budget serving deployment
// "a" (600 bytes), whose one request is held inside the model until release.
type budgetHold struct {
	n        *node
	d        *deploy.Deployment
	spec     func(name string) deploy.Spec // a 600-byte deployment of the model name
	release  func()
	inflight <-chan error // the held request's result
}

func holdBudgetRequest(t *testing.T) budgetHold {
	t.Helper()
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{cfg: deploy.Config{MemoryBudget: 1000}})
	spec := func(name string) deploy.Spec {
		s := linearSpec(name, srv.Add("/"+name, linear(1)))
		s.Resources.MemoryBytes = 600
		return s
	}
	if _, err := n.m.Assign("a", spec("a"), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "a", deploy.Ready)
	d, err := n.m.Model("a", "")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := n.loader.hold()
	t.Cleanup(release)
	inflight := make(chan error, 1)
	go func() { _, err := inferOn(d); inflight <- err }()
	receive(t, entered, "the request to reach the model")
	return budgetHold{n: n, d: d, spec: spec, release: release, inflight: inflight}
}
