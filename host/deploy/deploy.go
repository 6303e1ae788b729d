// Package deploy holds the node's deployments: each is a model fetched,
// verified, loaded and served behind its own inference engine. A deployment's
// life (Pending → Fetching → Loading → Ready → Running → Stopping → Stopped,
// or Failed with a reason from any step) is driven by one goroutine owned by
// the Manager; every change is stored durably and published to watchers.
// A failure in one deployment never touches another.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Errors callers branch on.
var (
	// ErrNotFound: no deployment with that id, or no model of that name.
	ErrNotFound = errors.New("not found")
	// ErrNotReady: the deployment exists but is not serving.
	ErrNotReady = errors.New("model not ready")
	// ErrExists: the id is taken by another spec, or the model name by another deployment.
	ErrExists = errors.New("already exists")
	// ErrInvalidSpec: the spec cannot be deployed as written.
	ErrInvalidSpec = errors.New("invalid deployment spec")
	// ErrNoCapacity: the node is full (deployments or memory budget).
	ErrNoCapacity = errors.New("node has no capacity")
	// ErrClosed: the node is shutting down and takes no new work.
	ErrClosed = errors.New("node is shutting down")
	// ErrFailed: the deployment failed and will not serve until it is
	// assigned again (retrying does not help). It is also ErrNotReady.
	ErrFailed error = failedError{}
)

// failedError is ErrFailed: it reads and matches as ErrNotReady.
type failedError struct{}

func (failedError) Error() string { return ErrNotReady.Error() }
func (failedError) Unwrap() error { return ErrNotReady }

// State is a step of a deployment's life.
type State int

// The states, in the order a deployment passes them.
const (
	Pending State = iota
	Fetching
	Loading
	Ready
	Running
	Stopping
	Stopped
	Failed
)

var stateNames = [...]string{"Pending", "Fetching", "Loading", "Ready", "Running", "Stopping", "Stopped", "Failed"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ParseState is the inverse of String.
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n == s {
			return State(i), true
		}
	}
	return 0, false
}

// Serving reports whether requests are accepted in this state.
func (s State) Serving() bool { return s == Ready || s == Running }

// Active reports whether the deployment holds or is acquiring resources.
func (s State) Active() bool { return s != Stopped && s != Failed }

// Owners of deployments.
const (
	OwnerCentral  = "central"
	OwnerOperator = "operator"
)

// Progress tells how far fetching or loading has come.
type Progress struct {
	Phase string
	Done  int64
	Total int64 // -1 or 0 when unknown
}

// Status is a snapshot of a deployment.
type Status struct {
	ID       string
	Owner    string
	Spec     Spec
	State    State
	Message  string
	Progress Progress
	Created  time.Time
	Updated  time.Time
	Info     loaders.Info // valid once loaded
	// Batching is the batching the deployment runs with: its spec's, and
	// for what a spec assigned over gRPC leaves at zero, node.toml's
	// [inference.batching] (Spec keeps the zeros, as assigned).
	Batching engine.Config
	Stats    engine.Stats
	// MemoryBytes is the memory the deployment is charged against the budget.
	MemoryBytes int64
	// Seq counts the deployment's changes: a watcher drops a live event
	// older than its snapshot of the same deployment.
	Seq uint64
}

// Deployment is one model on the node.
type Deployment struct {
	id    string
	owner string
	spec  Spec
	// batching is spec's batching with the node's defaults (Status.Batching).
	batching engine.Config
	log      *slog.Logger

	// run owns the goroutine driving the deployment; cancel stops it (with
	// a cause, or nil) and done closes when it has returned.
	cancel context.CancelCauseFunc
	done   chan struct{}

	mu       sync.RWMutex
	state    State
	message  string
	progress Progress
	created  time.Time
	updated  time.Time
	seq      uint64         // Status.Seq
	seqs     *atomic.Uint64 // the manager's counter
	charge   int64          // bytes charged against the memory budget
	model    loaders.Model
	info     loaders.Info
	sched    *engine.Scheduler
	pins     []string // artifact digests pinned in the cache
	pipe     atomic.Pointer[pipeline]
	// swapCancel cancels a guest swap in progress (nil when none): Stop
	// calls it so as not to wait for the swap's downloads. stopping counts
	// the Stops under way, marked first, so that a swap starting after one
	// gives up at once.
	swapCancel context.CancelFunc
	stopping   int
	// restarting: stopped to start again at once with a new spec (see
	// AssignContext); its name, place and memory are kept for the next
	// run. Guarded by the Manager's mu.
	restarting bool

	// notify persists and publishes a change; set by the Manager.
	notify func(*Deployment)
	// pub orders notify's work: each status is stored and published before
	// a later one is taken, so that watchers see the states in order.
	pub sync.Mutex
	// published is the Seq of the last status published (guarded by pub):
	// a status goes out once.
	published uint64
}

// ID is the deployment id.
func (d *Deployment) ID() string { return d.id }

// Name is the model name clients use.
func (d *Deployment) Name() string { return d.spec.Name }

// Version is the model version.
func (d *Deployment) Version() string { return d.spec.Version }

// Info describes the model as clients see it; zero before loading. Its
// inputs are the preprocess (or FORMAT) guest's and its outputs the
// postprocess (or FORMAT) guest's where the deployment has them: what they
// declare (guest.Signature), none when they declare nothing.
func (d *Deployment) Info() loaders.Info {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.servedInfo()
}

// servedInfo is Info; d.mu must be held.
func (d *Deployment) servedInfo() loaders.Info {
	info := d.info
	if p := d.pipe.Load(); p != nil {
		if p.pre != nil || p.format != nil {
			info.Inputs = p.inputs
		}
		if p.post != nil || p.format != nil {
			info.Outputs = p.outputs
		}
	}
	return info
}

// charged is the memory d is charged against the budget.
func (d *Deployment) charged() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.charge
}

// State is the current state.
func (d *Deployment) State() State {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.state
}

// Status returns a snapshot.
func (d *Deployment) Status() Status {
	d.mu.RLock()
	defer d.mu.RUnlock()
	st := Status{ID: d.id, Owner: d.owner, Spec: d.spec, State: d.state, Message: d.message, Progress: d.progress,
		Created: d.created, Updated: d.updated, Info: d.servedInfo(), MemoryBytes: d.charge, Seq: d.seq, Batching: d.batching}
	if d.sched != nil {
		st.Stats = d.sched.Stats()
	}
	return st
}

// bump gives d's status a new sequence number; d.mu must be held.
func (d *Deployment) bump() {
	if d.seqs != nil {
		d.seq = d.seqs.Add(1)
		return
	}
	d.seq++
}

// Infer runs a request through the deployment's pipeline: the preprocess
// guest (if any), the native model behind its engine, the postprocess guest
// (if any). outputs names what the caller wants back (all when empty).
func (d *Deployment) Infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error) {
	p := d.enterPipeline()
	if p == nil {
		return nil, fmt.Errorf("%w: %s is %v", ErrNotReady, d.spec.Name, d.State())
	}
	defer p.leave()
	// What the guests declared is checked here, before they run; the
	// native model's own inputs are checked in inferNative.
	if p.inputs != nil {
		if err := loaders.CheckInputs(p.inputs, inputs); err != nil {
			return nil, fmt.Errorf("model %s: %w", d.spec.Name, err)
		}
	}
	if p.outputs != nil {
		if err := loaders.CheckOutputs(p.outputs, outputs); err != nil {
			return nil, fmt.Errorf("model %s: %w", d.spec.Name, err)
		}
	}
	var err error
	if p.pre != nil {
		if inputs, err = p.pre.Preprocess(ctx, inputs); err != nil {
			return nil, fmt.Errorf("model %s: preprocess: %w", d.spec.Name, err)
		}
	}
	if p.post == nil {
		return d.inferNative(ctx, inputs, outputs)
	}
	outs, err := d.inferNative(ctx, inputs, nil)
	if err != nil {
		return nil, err
	}
	if outs, err = p.post.Postprocess(ctx, outs); err != nil {
		return nil, fmt.Errorf("model %s: postprocess: %w", d.spec.Name, err)
	}
	if err := checkDeclared(p.outputs, outs); err != nil {
		return nil, fmt.Errorf("model %s: postprocess: %w", d.spec.Name, err)
	}
	return selectOutputs(outs, outputs, p.outputs)
}

// enterPipeline returns the current pipeline, held for reading, or nil when
// the deployment does not serve.
func (d *Deployment) enterPipeline() *pipeline {
	for {
		p := d.pipe.Load()
		if p == nil || !d.State().Serving() {
			return nil
		}
		if p.enter() {
			return p
		}
		if d.pipe.Load() == p {
			return nil // closing and still installed: the deployment is going
		}
		// A guest swap installed the next pipeline: enter that one.
	}
}

// inferNative checks the inputs against the model, then queues them on the
// deployment's engine. Checking first keeps one bad request from failing the
// batch it would have joined.
func (d *Deployment) inferNative(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error) {
	d.mu.RLock()
	state, sched, info := d.state, d.sched, d.info
	d.mu.RUnlock()
	// Stopping: a request that entered the pipeline before the stop is
	// drained, not refused (unload keeps the engine until it leaves).
	if !(state.Serving() || state == Stopping) || sched == nil {
		return nil, fmt.Errorf("%w: %s is %v", ErrNotReady, d.spec.Name, state)
	}
	// A FORMAT guest's model is checked against what the guest declared,
	// if it did.
	if info.Format != FormatGuest || info.Inputs != nil {
		if err := loaders.CheckInputs(info.Inputs, inputs); err != nil {
			return nil, fmt.Errorf("model %s: %w", d.spec.Name, err)
		}
	}
	if info.Format != FormatGuest || info.Outputs != nil {
		if err := loaders.CheckOutputs(info.Outputs, outputs); err != nil {
			return nil, fmt.Errorf("model %s: %w", d.spec.Name, err)
		}
	}
	if state == Ready {
		d.mu.Lock()
		changed := d.state == Ready
		if changed {
			d.state, d.updated = Running, time.Now()
			d.bump()
		}
		d.mu.Unlock()
		if changed {
			d.notify(d)
		}
	}
	return sched.Infer(ctx, engine.Request{Inputs: inputs, Outputs: outputs})
}

// batchable reports whether every input and output has a dynamic dimension 0,
// so that requests can be stacked along it. A model with no inputs or no
// outputs listed (a FORMAT guest that declares none) is not: its outputs
// may have any rows.
func batchable(info loaders.Info) bool {
	for _, list := range [][]loaders.TensorSpec{info.Inputs, info.Outputs} {
		for _, s := range list {
			if len(s.Shape) == 0 || s.Shape[0] != -1 {
				return false
			}
		}
	}
	return len(info.Inputs) > 0 && len(info.Outputs) > 0
}
