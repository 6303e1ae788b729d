// Package deploy holds the node's deployments: each is a loaded model behind
// its own inference engine, with a state, a message and timestamps that the
// gRPC faces report. A deployment that fails to load is Failed with the
// reason; every other deployment keeps serving.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Errors callers branch on.
var (
	// ErrNotFound: no deployment serves that model name (or version).
	ErrNotFound = errors.New("model not found")
	// ErrNotReady: the deployment exists but is not serving (loading, failed, stopped).
	ErrNotReady = errors.New("model not ready")
	// ErrExists: a deployment with that name or id already exists.
	ErrExists = errors.New("deployment already exists")
)

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

// Serving reports whether requests are accepted in this state.
func (s State) Serving() bool { return s == Ready || s == Running }

// Spec is what to deploy.
type Spec struct {
	ID       string
	Name     string // model name clients use
	Version  string
	Format   string
	Path     string // local model file
	Owner    string // "operator" (node.toml) or "central"
	Batching engine.Config
	Load     loaders.Options
}

// Status is a snapshot of a deployment.
type Status struct {
	Spec      Spec
	State     State
	Message   string
	Created   time.Time
	Updated   time.Time
	Info      loaders.Info // valid once loaded
	Stats     engine.Stats
	MemoryUse int64
}

// Deployment is one model being served.
type Deployment struct {
	spec Spec
	log  *slog.Logger

	mu      sync.RWMutex
	state   State
	message string
	created time.Time
	updated time.Time
	model   loaders.Model
	info    loaders.Info
	sched   *engine.Scheduler
}

// Name is the model name clients use.
func (d *Deployment) Name() string { return d.spec.Name }

// Version is the model version.
func (d *Deployment) Version() string { return d.spec.Version }

// Info describes the loaded model; zero before loading.
func (d *Deployment) Info() loaders.Info {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.info
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
	st := Status{Spec: d.spec, State: d.state, Message: d.message, Created: d.created, Updated: d.updated, Info: d.info, MemoryUse: d.info.MemoryBytes}
	if d.sched != nil {
		st.Stats = d.sched.Stats()
	}
	return st
}

func (d *Deployment) setState(s State, msg string) {
	d.mu.Lock()
	d.state, d.message, d.updated = s, msg, time.Now()
	d.mu.Unlock()
	if s == Failed {
		d.log.Error("deployment failed", "state", s.String(), "reason", msg)
	} else {
		d.log.Info("deployment state", "state", s.String(), "message", msg)
	}
}

// Infer checks the inputs against the model, then queues them on the
// deployment's engine. Checking first keeps one bad request from failing the
// batch it would have joined.
func (d *Deployment) Infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error) {
	d.mu.RLock()
	state, sched, info := d.state, d.sched, d.info
	d.mu.RUnlock()
	if !state.Serving() || sched == nil {
		return nil, fmt.Errorf("%w: %s is %v", ErrNotReady, d.spec.Name, state)
	}
	if err := loaders.CheckInputs(info.Inputs, inputs); err != nil {
		return nil, fmt.Errorf("model %s: %w", d.spec.Name, err)
	}
	if err := loaders.CheckOutputs(info.Outputs, outputs); err != nil {
		return nil, fmt.Errorf("model %s: %w", d.spec.Name, err)
	}
	if state == Ready {
		d.mu.Lock()
		if d.state == Ready {
			d.state, d.updated = Running, time.Now()
		}
		d.mu.Unlock()
	}
	return sched.Infer(ctx, engine.Request{Inputs: inputs, Outputs: outputs})
}

// load loads the model and starts its engine.
func (d *Deployment) load(ctx context.Context, reg *loaders.Registry) error {
	d.setState(Loading, "loading "+d.spec.Path)
	start := time.Now()
	m, err := reg.Load(ctx, d.spec.Format, d.spec.Path, d.spec.Load)
	if err != nil {
		return err
	}
	info := m.Info()
	cfg := d.spec.Batching
	if cfg.MaxBatchSize > 1 && !batchable(info) {
		d.log.Info("model has no dynamic leading dimension on every tensor: batching off")
		cfg.MaxBatchSize, cfg.PreferredBatchSizes = 0, nil
	}
	sched, err := engine.New(d.spec.Name, m, cfg, d.log)
	if err != nil {
		m.Close()
		return err
	}
	d.mu.Lock()
	d.model, d.info, d.sched = m, info, sched
	d.mu.Unlock()
	d.setState(Ready, fmt.Sprintf("loaded in %v (%s, providers %v)", time.Since(start).Round(time.Millisecond), info.Platform, info.Providers))
	return nil
}

// batchable reports whether every input and output has a dynamic dimension 0,
// so that requests can be stacked along it.
func batchable(info loaders.Info) bool {
	for _, list := range [][]loaders.TensorSpec{info.Inputs, info.Outputs} {
		for _, s := range list {
			if len(s.Shape) == 0 || s.Shape[0] != -1 {
				return false
			}
		}
	}
	return len(info.Inputs) > 0
}

// stop drains the engine and unloads the model.
func (d *Deployment) stop(ctx context.Context) error {
	d.mu.Lock()
	if d.state == Stopped || d.state == Failed && d.sched == nil {
		d.mu.Unlock()
		return nil
	}
	sched, model := d.sched, d.model
	d.mu.Unlock()
	d.setState(Stopping, "draining")
	var errs []error
	if sched != nil {
		errs = append(errs, sched.Close(ctx))
	}
	if model != nil {
		errs = append(errs, model.Close())
	}
	d.mu.Lock()
	d.sched, d.model = nil, nil
	d.mu.Unlock()
	d.setState(Stopped, "stopped")
	return errors.Join(errs...)
}

// Manager holds every deployment of the node.
type Manager struct {
	reg *loaders.Registry
	log *slog.Logger

	mu     sync.RWMutex
	byID   map[string]*Deployment
	byName map[string]*Deployment
	wg     sync.WaitGroup
}

// NewManager returns an empty manager that loads models through reg.
func NewManager(reg *loaders.Registry, log *slog.Logger) *Manager {
	return &Manager{reg: reg, log: log, byID: map[string]*Deployment{}, byName: map[string]*Deployment{}}
}

// Registry is the loader registry the manager uses.
func (m *Manager) Registry() *loaders.Registry { return m.reg }

// Deploy adds a deployment and loads it synchronously. A load failure leaves
// the deployment Failed with the reason and is returned; other deployments
// are untouched.
func (m *Manager) Deploy(ctx context.Context, spec Spec) (*Deployment, error) {
	if spec.ID == "" {
		spec.ID = spec.Name
	}
	if spec.Version == "" {
		spec.Version = "1"
	}
	now := time.Now()
	d := &Deployment{spec: spec, state: Pending, created: now, updated: now,
		log: m.log.With("deployment", spec.ID, "model", spec.Name)}
	m.mu.Lock()
	if _, ok := m.byID[spec.ID]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: id %q", ErrExists, spec.ID)
	}
	if _, ok := m.byName[spec.Name]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: model name %q", ErrExists, spec.Name)
	}
	m.byID[spec.ID], m.byName[spec.Name] = d, d
	m.mu.Unlock()

	if err := d.load(ctx, m.reg); err != nil {
		d.setState(Failed, err.Error())
		return d, fmt.Errorf("deploy %s: %w", spec.ID, err)
	}
	return d, nil
}

// Model returns the deployment serving name. version "" matches any; a
// deployment that is not serving is returned with ErrNotReady.
func (m *Manager) Model(name, version string) (*Deployment, error) {
	m.mu.RLock()
	d, ok := m.byName[name]
	m.mu.RUnlock()
	if !ok || (version != "" && version != d.spec.Version) {
		if ok {
			return nil, fmt.Errorf("%w: %s version %q (have %q)", ErrNotFound, name, version, d.spec.Version)
		}
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if st := d.State(); !st.Serving() {
		return d, fmt.Errorf("%w: %s is %v", ErrNotReady, name, st)
	}
	return d, nil
}

// List returns every deployment sorted by id.
func (m *Manager) List() []*Deployment {
	m.mu.RLock()
	out := make([]*Deployment, 0, len(m.byID))
	for _, d := range m.byID {
		out = append(out, d)
	}
	m.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].spec.ID < out[j].spec.ID })
	return out
}

// Close stops every deployment, draining each within ctx.
func (m *Manager) Close(ctx context.Context) error {
	var errs []error
	for _, d := range m.List() {
		if err := d.stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", d.spec.ID, err))
		}
	}
	return errors.Join(errs...)
}
