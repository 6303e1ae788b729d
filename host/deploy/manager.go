package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// Config bounds what the Manager takes on.
type Config struct {
	// MaxDeployments counts deployments that are not Stopped or Failed.
	MaxDeployments int
	// MemoryBudget is what all loaded models may hold together; 0 = no limit.
	MemoryBudget int64
	// MaxArtifactSize bounds one downloaded artifact; 0 = no limit.
	MaxArtifactSize int64
	// MaxConcurrentFetches and MaxConcurrentLoads bound parallel work.
	MaxConcurrentFetches int
	MaxConcurrentLoads   int
	// FetchTimeout bounds one artifact download; 0 = no limit.
	FetchTimeout time.Duration
	// DrainTimeout bounds how long Stop waits for in-flight requests.
	DrainTimeout time.Duration
	// GPUs is the number of GPUs the node has.
	GPUs int
	// Load holds the loader defaults (threads, providers) for every deployment.
	Load loaders.Options
	// Guests runs deployments' WebAssembly guests; nil refuses deployments
	// that have guests.
	Guests *guest.Runtime
	// GuestInstances is the default pool size of each guest.
	GuestInstances int
	// AllowPreciseClock lets a spec grant its guests full-resolution clocks.
	AllowPreciseClock bool
	// Batching is node.toml's [inference.batching]: what a spec sent over
	// gRPC leaves at zero (see WithBatchingDefaults).
	Batching engine.Config
	// KeepStopped is how many stopped or failed deployments the node remembers (see
	// DefaultKeepStopped); 0 takes the default.
	KeepStopped int
}

// WithBatchingDefaults fills the fields of b left at zero from def, the
// node's defaults: a spec from the Central Server or cyxwizctl that says
// nothing about batching gets the node's batching, and one that sets only
// instances keeps the rest. The preferred sizes come with the maximum: a
// spec that sets its own max_batch_size keeps its own (or no) preferred
// sizes. A max_batch_size of 1 is how such a spec turns batching off.
func WithBatchingDefaults(b, def engine.Config) engine.Config {
	if b.MaxBatchSize == 0 {
		b.MaxBatchSize = def.MaxBatchSize
		if len(b.PreferredBatchSizes) == 0 {
			b.PreferredBatchSizes = slices.Clone(def.PreferredBatchSizes)
		}
	}
	if b.MaxQueueDelay == 0 {
		b.MaxQueueDelay = def.MaxQueueDelay
	}
	if b.QueueCapacity == 0 {
		b.QueueCapacity = def.QueueCapacity
	}
	if b.Instances == 0 {
		b.Instances = def.Instances
	}
	return b
}

// batchingFor is the batching a deployment of owner with spec runs with:
// the operator's [[models]] carry theirs whole (config filled them, an
// explicit 0 included); a spec assigned over gRPC takes node.toml's
// defaults for what it leaves at zero. The spec itself keeps its zeros,
// so that the Central Server's unchanged assignment is the same spec after
// node.toml's defaults change.
func (m *Manager) batchingFor(owner string, spec Spec) engine.Config {
	if owner == OwnerOperator {
		return spec.Batching
	}
	return WithBatchingDefaults(spec.Batching, m.cfg.Batching)
}

// sameSpec reports whether a deployment's spec have and an assigned next
// are the same assignment: equal, or equal once both take the node's
// batching defaults (a deployment stored before specs kept their zeros
// holds the defaults of its day, filled in).
func (m *Manager) sameSpec(have, next Spec) bool {
	return have.Equal(next) || m.withDefaults(have).Equal(m.withDefaults(next))
}

// withDefaults is spec with the node's batching defaults filled in.
func (m *Manager) withDefaults(spec Spec) Spec {
	spec.Batching = WithBatchingDefaults(spec.Batching, m.cfg.Batching)
	return spec
}

// withDefaultsFor is spec with the batching a deployment of owner runs with.
func (m *Manager) withDefaultsFor(owner string, spec Spec) Spec {
	spec.Batching = m.batchingFor(owner, spec)
	return spec
}

// BatchingDefaults is Config.Batching.
func (m *Manager) BatchingDefaults() engine.Config {
	d := m.cfg.Batching
	d.PreferredBatchSizes = slices.Clone(d.PreferredBatchSizes)
	return d
}

// Manager holds every deployment of the node and drives their lives.
type Manager struct {
	// seq numbers every deployment change, node-wide (Status.Seq).
	seq atomic.Uint64
	// flushed: Flush was called; schedulers made later are flushed too.
	flushed atomic.Bool
	cfg     Config
	reg     *loaders.Registry
	cache   *artifact.Cache // nil: only file:// URIs without digest work
	store   *store.Store    // nil: nothing survives a restart
	log     *slog.Logger

	fetchSem chan struct{}
	loadSem  chan struct{}

	ctx    context.Context // parent of every deployment goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// ops serialises the control operations on one id (Assign, Stop), so
	// that each sees the other's result; ids proceed in parallel.
	ops idLocks

	mu     sync.Mutex
	byID   map[string]*Deployment
	byName map[string]*Deployment // serving or on its way (Active)
	closed bool
	// lingering holds the deployments whose stop gave up draining: their
	// models close when the requests still running return, and stay
	// charged against the memory budget until then (even once their id
	// has been taken by a new run).
	lingering map[*Deployment]struct{}

	watch broker
}

// NewManager returns a manager. cache and st may be nil (tests, or a node
// without persistence).
func NewManager(cfg Config, reg *loaders.Registry, cache *artifact.Cache, st *store.Store, log *slog.Logger) *Manager {
	if cfg.MaxConcurrentFetches <= 0 {
		cfg.MaxConcurrentFetches = 2
	}
	if cfg.MaxConcurrentLoads <= 0 {
		cfg.MaxConcurrentLoads = 2
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg: cfg, reg: reg, cache: cache, store: st, log: log,
		fetchSem: make(chan struct{}, cfg.MaxConcurrentFetches),
		loadSem:  make(chan struct{}, cfg.MaxConcurrentLoads),
		ctx:      ctx, cancel: cancel,
		byID: map[string]*Deployment{}, byName: map[string]*Deployment{},
		lingering: map[*Deployment]struct{}{},
	}
}

// Registry is the loader registry the manager uses.
func (m *Manager) Registry() *loaders.Registry { return m.reg }

// Assign is AssignContext without a deadline: it waits for any operation
// holding the id, however long.
func (m *Manager) Assign(id string, spec Spec, owner string) (Status, error) {
	return m.AssignContext(context.Background(), id, spec, owner)
}

// AssignContext accepts a deployment: it validates the spec, checks
// capacity, stores the deployment durably and starts its life in the
// background. The same id with an equal spec returns the current status
// (and restarts a Stopped or Failed deployment); the same id with another
// spec is ErrExists, or a guest swap (see swapGuests). ctx bounds the wait
// for another operation on the id (a Stop draining it, say) and a guest
// swap; the deployment's own life does not depend on it.
func (m *Manager) AssignContext(ctx context.Context, id string, spec Spec, owner string) (Status, error) {
	if id == "" {
		return Status{}, fmt.Errorf("%w: deployment_id is empty", ErrInvalidSpec)
	}
	spec = spec.normal()
	if err := m.withDefaultsFor(owner, spec).validate(m.reg.Known, m.cfg); err != nil {
		return Status{}, err
	}
	unlock, err := m.ops.lock(ctx, id)
	if err != nil {
		return Status{}, fmt.Errorf("assign %s: %w", id, err)
	}
	defer unlock()
	m.mu.Lock()
	cur, ok := m.byID[id]
	m.mu.Unlock()
	if ok && cur.owner == owner { // another owner's deployment is not theirs to change
		if have := cur.Status().Spec; !m.sameSpec(have, spec) && swappable(m.withDefaults(have), m.withDefaults(spec)) {
			switch st := cur.State(); {
			case st.Serving():
				return m.swapGuests(ctx, cur, spec)
			case st == Pending || st == Fetching || st == Loading:
				// Not serving yet: there is nothing to swap live. Its run
				// stops and the id starts again with the new guests (the
				// model is the same artifact: cached, or its download
				// resumed), as a stopped id takes a new spec. Its model
				// name, its place and its memory stay reserved for the new
				// run: another deployment must not take them in between.
				m.log.Info("guests changed while the deployment was starting: starting again with the new ones",
					"deployment", id, "state", st.String())
				m.mu.Lock()
				cur.restarting = true
				m.mu.Unlock()
				m.stop(ctx, cur, 0, "stopped: its guests changed as it started; it starts again with the new ones", true)
				defer func() { // the new run took them over, unless it failed to start
					m.mu.Lock()
					cur.restarting = false
					if m.byName[cur.spec.Name] == cur {
						delete(m.byName, cur.spec.Name)
					}
					m.mu.Unlock()
				}()
			}
		}
	}
	for {
		d, wait, err := m.assignLocked(id, spec, owner)
		if wait != nil {
			// The id's previous run is finishing, and takes m.mu on its way
			// out: wait for it without holding m.mu, then try again.
			select {
			case <-wait:
			case <-ctx.Done():
				return Status{}, fmt.Errorf("assign %s: waiting for its previous run to end: %w", id, ctx.Err())
			}
			continue
		}
		if err != nil && owner == OwnerOperator && errors.Is(err, ErrNoCapacity) {
			// A node.toml model is the operator's declaration: refused
			// at admission it stays listed, Failed with why, as one that
			// fails to load (it was nowhere: NOT_FOUND everywhere).
			d := m.newDeployment(id, owner, spec, time.Now())
			m.restoreIdle(d, Failed, err.Error())
			return d.Status(), err
		}
		if err != nil || d == nil {
			return Status{}, err
		}
		if ok && d == cur {
			// Idempotent: the deployment's status goes out again (a new
			// one's goroutine publishes it, Pending first).
			m.publish(d, true)
		}
		return d.Status(), nil
	}
}

// assignLocked does Assign's work under m.mu. It returns the deployment it
// started (or the active one with that id), or a channel to wait on before
// trying again when the id's previous run has not returned yet.
func (m *Manager) assignLocked(id string, spec Spec, owner string) (*Deployment, <-chan struct{}, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, fmt.Errorf("deploy %s: %w", id, ErrClosed)
	}
	if d, ok := m.byID[id]; ok {
		if st := d.State(); st.Active() {
			if have := d.Status().Spec; !m.sameSpec(have, spec) {
				return nil, nil, fmt.Errorf("%w: deployment %q is %v with a different spec (stop it first, or use another id)", ErrExists, id, st)
			}
			return d, nil, nil
		}
		// Stopped or Failed: the id takes the new spec (or the same one
		// again) once its last run has returned, unless it is another
		// owner's: a node.toml model's id stays the operator's, even for
		// its own spec (taken over, it was the Central Server's to stop).
		if d.owner != owner && (d.owner == OwnerOperator || !m.sameSpec(d.Status().Spec, spec)) {
			return nil, nil, fmt.Errorf("%w: deployment %q belongs to the %s (stopped or failed): use another id", ErrExists, id, d.owner)
		}
		select {
		case <-d.done: // the old run has returned: reuse the id
		default:
			return nil, d.done, nil
		}
	}
	if other, ok := m.byName[spec.Name]; ok && other.id != id {
		return nil, nil, fmt.Errorf("%w: model name %q is served by deployment %q", ErrExists, spec.Name, other.id)
	}
	if err := m.admitLocked(id, spec); err != nil {
		return nil, nil, err
	}
	now := time.Now()
	d := m.newDeployment(id, owner, spec, now)
	if old, ok := m.byID[id]; ok {
		d.created = old.created
	}
	if m.store != nil && owner != OwnerOperator {
		raw, err := json.Marshal(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("deploy %s: encode spec: %w", id, err)
		}
		rec := store.Record{ID: id, Spec: raw, Desired: store.DesiredRunning, State: Pending.String(),
			Message: "accepted", Created: d.created, Updated: now, Owner: owner}
		if err := m.store.Put(rec); err != nil {
			return nil, nil, fmt.Errorf("deploy %s: %w", id, err)
		}
	}
	m.startLocked(d)
	return d, nil, nil
}

func (m *Manager) newDeployment(id, owner string, spec Spec, now time.Time) *Deployment {
	d := &Deployment{id: id, owner: owner, spec: spec, batching: m.batchingFor(owner, spec), state: Pending, message: "accepted",
		created: now, updated: now, done: make(chan struct{}),
		log: m.log.With("deployment", id, "model", spec.Name)}
	d.notify = m.changed
	d.seqs = &m.seq
	d.seq = m.seq.Add(1)
	return d
}

// admitLocked checks the deployment count and memory budget for spec
// under id. A deployment of another id stopped to start again at once
// (restarting) keeps its place and its declared memory.
func (m *Manager) admitLocked(id string, spec Spec) error {
	active := 0
	var reserved int64
	for _, d := range m.byID {
		held := d.restarting && d.id != id
		if d.State().Active() || held {
			active++
		}
		if held {
			reserved += max(estimate(d.spec)-d.charged(), 0)
		}
	}
	used := m.chargedLocked(nil) + reserved
	if m.cfg.MaxDeployments > 0 && active >= m.cfg.MaxDeployments {
		return fmt.Errorf("%w: %d of %d deployments in use (limits.max_deployments)", ErrNoCapacity, active, m.cfg.MaxDeployments)
	}
	need := estimate(spec)
	if m.cfg.MemoryBudget > 0 && used+need > m.cfg.MemoryBudget {
		return fmt.Errorf("%w: memory budget: needs %d bytes, %d of %d in use, %d free (limits.memory_budget)",
			ErrNoCapacity, need, used, m.cfg.MemoryBudget, m.cfg.MemoryBudget-used)
	}
	return nil
}

// fitsLocked checks that d, charged charge bytes, fits the memory budget
// next to every other active deployment.
func (m *Manager) fitsLocked(d *Deployment, charge int64) error {
	if m.cfg.MemoryBudget <= 0 {
		return nil
	}
	used := m.chargedLocked(d)
	if used+charge > m.cfg.MemoryBudget {
		return fmt.Errorf("%w: memory budget: the loaded model holds %d bytes, %d of %d in use, %d free (limits.memory_budget)",
			ErrNoCapacity, charge, used, m.cfg.MemoryBudget, max(m.cfg.MemoryBudget-used, 0))
	}
	return nil
}

// chargedLocked sums the memory charged against the budget by every
// deployment other than except: the active ones, and the stopped ones whose
// model is still loaded because their drain gave up on a request (a
// stopped or failed deployment's charge is 0 once its model is closed).
func (m *Manager) chargedLocked(except *Deployment) int64 {
	var used int64
	for _, o := range m.byID {
		if o != except {
			used += o.charged()
		}
	}
	for o := range m.lingering {
		if o != except && m.byID[o.id] != o {
			used += o.charged()
		}
	}
	return used
}

// estimate is the memory charged before the loader reports: the larger of
// the declared requirement and the model's declared size.
func estimate(spec Spec) int64 {
	return max(spec.Resources.MemoryBytes, spec.Model.Size)
}

// startLocked registers d and starts its goroutine, which publishes d
// (Pending) first. (Lock order: the watch broker's lock may be held while
// taking m.mu, never the reverse; the goroutine publishes without m.mu.)
func (m *Manager) startLocked(d *Deployment) {
	ctx, cancel := context.WithCancelCause(m.ctx)
	d.cancel = cancel
	d.charge = estimate(d.spec)
	m.byID[d.id] = d
	m.byName[d.spec.Name] = d
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(d.done)
		m.run(ctx, d)
	}()
}

// run takes a deployment from Pending to Ready, or to Failed.
func (m *Manager) run(ctx context.Context, d *Deployment) {
	m.changed(d) // Pending, published before this goroutine moves it on
	err := m.bringUp(ctx, d)
	if err == nil {
		return
	}
	if ctx.Err() != nil || errors.Is(err, artifact.ErrClosed) {
		// Stopped, or the node shutting down (it closes the cache first,
		// so that partial downloads are kept): Stop or Close sets the
		// state, and a restart picks the deployment up again.
		return
	}
	// A fetch deadline (FetchTimeout) ends here as a failure like any other.
	m.unload(d, context.Background())
	// Free the name first: once d is Failed, Assign may wait for this
	// goroutine's end while holding m.mu.
	m.mu.Lock()
	if m.byName[d.spec.Name] == d {
		delete(m.byName, d.spec.Name)
	}
	m.mu.Unlock()
	m.set(d, Failed, err.Error())
	// Failed deployments count with the stopped ones: a client assigning
	// new ids against a dead URL made them (and the store, and every
	// list) grow without end.
	m.forgetOldFinished()
}

func (m *Manager) bringUp(ctx context.Context, d *Deployment) error {
	// Pinned before waiting for a fetch slot: a download that finishes
	// meanwhile may evict what is not pinned, and this deployment's
	// artifacts, cached already, would be downloaded again.
	for _, a := range artifactsOf(d.spec) {
		if err := m.pin(d, a); err != nil {
			return err
		}
	}
	if err := acquire(ctx, m.fetchSem); err != nil {
		return err
	}
	paths, err := m.fetchAll(ctx, d)
	release(m.fetchSem)
	if err != nil {
		return err
	}
	if err := acquire(ctx, m.loadSem); err != nil {
		return err
	}
	defer release(m.loadSem)
	return m.load(ctx, d, paths)
}

func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func release(sem chan struct{}) { <-sem }

// fetchAll fetches the model and every guest; it returns local paths by
// "model" and guest name.
func (m *Manager) fetchAll(ctx context.Context, d *Deployment) (map[string]string, error) {
	type item struct {
		key string
		a   artifact.Artifact
	}
	items := []item{{"model", d.spec.Model}}
	for _, g := range d.spec.Guests {
		items = append(items, item{g.Name, g.Artifact})
	}
	paths := map[string]string{}
	for _, it := range items {
		phase := "fetch " + it.key
		m.setProgress(d, Fetching, phase, Progress{Phase: phase, Total: it.a.Size})
		a := it.a
		if m.cfg.MaxArtifactSize > 0 {
			a.MaxSize = m.cfg.MaxArtifactSize
		}
		var last time.Time
		path, err := m.fetch(ctx, d, a, func(done, total int64) {
			if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || done == total {
				last = now
				m.setProgress(d, Fetching, phase, Progress{Phase: phase, Done: done, Total: total})
			}
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", phase, err)
		}
		paths[it.key] = path
	}
	return paths, nil
}

// artifactsOf lists spec's model and guest artifacts.
func artifactsOf(spec Spec) []artifact.Artifact {
	as := []artifact.Artifact{spec.Model}
	for _, g := range spec.Guests {
		as = append(as, g.Artifact)
	}
	return as
}

// pin pins a (one with a digest) in the cache for d's life.
func (m *Manager) pin(d *Deployment, a artifact.Artifact) error {
	if m.cache == nil || a.SHA256 == "" {
		return nil
	}
	if err := m.cache.Acquire(a.SHA256); err != nil {
		return err
	}
	d.mu.Lock()
	d.pins = append(d.pins, a.SHA256)
	d.mu.Unlock()
	return nil
}

// fetch fetches one of d's artifacts, which pin pinned. progress (may be
// nil) is the cache's progress callback.
func (m *Manager) fetch(ctx context.Context, d *Deployment, a artifact.Artifact, progress func(done, total int64)) (string, error) {
	if m.cache == nil {
		if a.SHA256 != "" {
			return "", errors.New("this node has no artifact cache")
		}
		return fileURIPath(a.URI)
	}
	if m.cfg.FetchTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.cfg.FetchTimeout)
		defer cancel()
	}
	return m.cache.Fetch(ctx, a, progress)
}

// load compiles the guests, loads the model and starts its engine.
func (m *Manager) load(ctx context.Context, d *Deployment, paths map[string]string) error {
	m.setProgress(d, Loading, "loading "+d.spec.Format+" model", Progress{Phase: "load"})
	start := time.Now()
	pipe, err := m.buildPipeline(ctx, d, d.spec, paths)
	if err != nil {
		return err
	}
	d.pipe.Store(pipe) // from here unload closes it
	model, err := m.loadModel(ctx, d, pipe, paths["model"])
	if err != nil {
		return err
	}
	info := model.Info()
	cfg := d.batching
	cfg.PreferredBatchSizes = slices.Clone(cfg.PreferredBatchSizes)
	if cfg.MaxBatchSize > 1 && !batchable(info) {
		d.log.Info("model has no dynamic leading dimension on every tensor: batching off")
		cfg.MaxBatchSize, cfg.PreferredBatchSizes = 0, nil
	}
	if pipe.policy != nil {
		cfg.Policy = d.batchPolicy
	}
	if pipe.policy != nil || pipe.format != nil {
		// Their guests may call other deployments from a batch.
		cfg.BatchValues = batchValues
	}
	// One request's values (a token id past the table) fail its batch:
	// the batch's requests then run alone, and only that one fails.
	cfg.Isolate = func(err error) bool { return errors.Is(err, loaders.ErrInvalidInput) }
	sched, err := engine.New(d.spec.Name, model, cfg, d.log)
	if err != nil {
		model.Close()
		return err
	}
	// Admission charged what the spec declared; the loaded model may hold
	// more (an artifact without a declared size is charged nothing). Check
	// the budget again with what it holds, under m.mu so that two loads
	// finishing together each see the other's charge.
	charge := max(estimate(d.spec), info.MemoryBytes)
	m.mu.Lock()
	err = m.fitsLocked(d, charge)
	if err == nil {
		d.mu.Lock()
		d.model, d.info, d.sched, d.charge = model, info, sched, charge
		d.mu.Unlock()
		if m.flushed.Load() { // after the store: Flush reads d.sched
			sched.Flush()
		}
	}
	m.mu.Unlock()
	if err != nil {
		if cerr := sched.Close(ctx); cerr != nil {
			d.log.Warn("drain", "err", cerr)
		}
		model.Close()
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err() // stopped while loading: Stop unloads
	}
	m.set(d, Ready, fmt.Sprintf("loaded in %v (%s, providers %v)", time.Since(start).Round(time.Millisecond), info.Platform, info.Providers))
	return nil
}

// loadModel loads the native model, or hands the file to the FORMAT guest.
func (m *Manager) loadModel(ctx context.Context, d *Deployment, pipe *pipeline, path string) (loaders.Model, error) {
	if d.spec.Format == FormatGuest {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
		if err := pipe.format.FormatLoad(ctx, data); err != nil {
			return nil, fmt.Errorf("format guest: load %s: %w", path, err)
		}
		if err := pipe.declareFormat(ctx, d); err != nil {
			return nil, err
		}
		return guestModel{pool: pipe.format, id: d.id, sig: pipe.formatSig}, nil
	}
	opts := m.cfg.Load
	// Only the operator's own models may read files next to them (ONNX
	// external data): the files next to an assigned model are the other
	// deployments' artifacts in the cache.
	opts.ExternalData = d.owner == OwnerOperator
	opts.Extra = d.spec.LoaderOptions
	opts.Logger = d.log
	if p := d.spec.Resources.Providers; len(p) > 0 {
		opts.Providers = p
	}
	if t := d.spec.Resources.CPUThreads; t > 0 {
		opts.IntraOpThreads = t
	}
	return m.reg.Load(ctx, d.spec.Format, path, opts)
}

// set changes d's state and message, then persists and publishes it.
func (m *Manager) set(d *Deployment, s State, msg string) {
	d.mu.Lock()
	d.state, d.message, d.updated = s, msg, time.Now()
	d.bump()
	if s != Fetching && s != Loading {
		d.progress = Progress{}
	}
	d.mu.Unlock()
	if s == Failed {
		d.log.Error("deployment failed", "reason", msg)
	} else {
		d.log.Info("deployment state", "state", s.String(), "message", msg)
	}
	m.changed(d)
}

func (m *Manager) setProgress(d *Deployment, s State, msg string, p Progress) {
	d.mu.Lock()
	changedState := d.state != s
	d.state, d.message, d.progress, d.updated = s, msg, p, time.Now()
	d.bump()
	d.mu.Unlock()
	if changedState {
		d.log.Info("deployment state", "state", s.String(), "message", msg)
	}
	m.changed(d)
}

// changed persists d's state (when it is a stored deployment) and publishes
// its status to watchers, unless that status went out already.
func (m *Manager) changed(d *Deployment) { m.publish(d, false) }

// publish is changed; again publishes d's status even when it went out
// already (an idempotent Assign).
func (m *Manager) publish(d *Deployment, again bool) {
	d.pub.Lock()
	defer d.pub.Unlock()
	st := d.Status()
	m.mu.Lock()
	current := m.byID[d.id] == d // a replaced run no longer speaks for the id
	m.mu.Unlock()
	if m.store != nil && d.owner != OwnerOperator && current {
		err := m.store.Update(d.id, func(r *store.Record) error {
			if r.State == st.State.String() && r.Message == st.Message {
				return errUnchanged
			}
			r.State, r.Message, r.Updated = st.State.String(), st.Message, st.Updated
			return nil
		})
		if err != nil && !errors.Is(err, errUnchanged) && !errors.Is(err, store.ErrNotFound) {
			d.log.Warn("persist deployment state", "err", err)
		}
	}
	if st.Seq <= d.published && !again {
		// Two changes both happened before the first's notification read
		// d's status: it went out already.
		return
	}
	d.published = st.Seq
	m.watch.publish(Event{Status: st})
}

var errUnchanged = errors.New("unchanged")

// Stop drains a deployment's in-flight requests for at most the node's
// DrainTimeout, unloads its model and records that it should stay stopped.
// Stopping a stopped deployment is fine.
func (m *Manager) Stop(ctx context.Context, id string) (Status, error) {
	return m.StopDrain(ctx, id, 0)
}

// StopDrain is Stop with the drain bounded by drain instead of the node's
// DrainTimeout (when drain > 0), and by ctx.
func (m *Manager) StopDrain(ctx context.Context, id string, drain time.Duration) (Status, error) {
	m.mu.Lock()
	marked, ok := m.byID[id]
	if ok {
		marked.mu.Lock()
		marked.stopping++
		if marked.swapCancel != nil {
			marked.swapCancel() // a guest swap holds the id: end it rather than wait
		}
		marked.mu.Unlock()
	}
	m.mu.Unlock()
	// giveUp undoes the mark of a Stop that does not happen after all:
	// swaps may come again (unless another Stop is waiting).
	giveUp := func() {
		if marked != nil {
			marked.mu.Lock()
			marked.stopping--
			marked.mu.Unlock()
		}
	}
	unlock, err := m.ops.lock(ctx, id)
	if err != nil {
		giveUp()
		return Status{}, fmt.Errorf("stop %s: %w", id, err)
	}
	defer unlock()
	d, err := m.Get(id)
	if err != nil {
		giveUp()
		return Status{}, err
	}
	if m.store != nil && d.owner != OwnerOperator {
		err := m.store.Update(id, func(r *store.Record) error { r.Desired = store.DesiredStopped; return nil })
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			giveUp()
			return Status{}, fmt.Errorf("stop %s: %w", id, err)
		}
	}
	if st := d.State(); st == Stopped {
		return d.Status(), nil
	}
	m.stop(ctx, d, drain, "stopped", false)
	st := d.Status()
	m.forgetOldFinished()
	return st, nil
}

// errRestart ends a run whose id starts again at once (its guests changed
// as it started). The artifact cache keeps a download that a run cut short
// for it, as one cut short by the cache closing, for the next run to
// resume: thrown away, a model half downloaded was fetched again from its
// first byte.
var errRestart = fmt.Errorf("the deployment starts again with a new spec: %w", artifact.ErrClosed)

// stop cancels d's goroutine, drains and unloads it within drain (the
// node's DrainTimeout when 0), and marks it Stopped with msg. With
// restart, the id starts again at once: d keeps its model name reserved,
// and a download it leaves is kept for the next run to resume.
func (m *Manager) stop(ctx context.Context, d *Deployment, drain time.Duration, msg string, restart bool) {
	var cause error
	if restart {
		cause = errRestart
	}
	d.cancel(cause)
	<-d.done
	// Read once the run has returned: a load failing as the stop came
	// is Failed now, and goes on to Stopped (no state goes backwards).
	if d.State() != Failed {
		m.set(d, Stopping, "draining in-flight requests")
	}
	if drain <= 0 {
		drain = m.cfg.DrainTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, drain)
	defer cancel()
	m.unload(d, dctx)
	m.mu.Lock()
	if m.byName[d.spec.Name] == d && !restart {
		delete(m.byName, d.spec.Name)
	}
	m.mu.Unlock()
	m.set(d, Stopped, msg)
}

// unload closes d's engine (draining within ctx) and model and unpins its
// artifacts. When the drain gives up with requests still running (a long
// model run under its caller's context), the model is closed once they
// return, in the background: the stop does not wait for them, and d stays
// charged until then.
func (m *Manager) unload(d *Deployment, ctx context.Context) {
	// The requests on the pipeline are in flight, those still in a guest
	// too: the engine stays open for them until they leave (or ctx ends).
	pipe := d.pipe.Swap(nil)
	if pipe != nil {
		select {
		case <-pipe.retired():
		case <-ctx.Done():
		}
	}
	d.mu.Lock()
	sched, model, pins := d.sched, d.model, d.pins
	d.sched, d.model, d.pins = nil, nil, nil
	d.mu.Unlock()
	gaveUp := false
	if sched != nil {
		if err := sched.Close(ctx); err != nil {
			d.log.Warn("drain", "err", err)
			gaveUp = true
		}
	}
	finish := func(ctx context.Context) {
		if model != nil {
			if err := model.Close(); err != nil {
				d.log.Warn("unload", "err", err)
			}
		}
		pipe.close(ctx)
		for _, p := range pins {
			if m.cache != nil {
				m.cache.Release(p)
			}
		}
		// The model's memory stays charged until it is closed: admission
		// must not count memory still held.
		d.mu.Lock()
		d.charge = 0
		d.mu.Unlock()
	}
	if !gaveUp {
		finish(ctx)
		return
	}
	m.mu.Lock()
	m.lingering[d] = struct{}{}
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		finish(m.ctx)
		m.mu.Lock()
		delete(m.lingering, d)
		m.mu.Unlock()
		d.log.Info("closed after its last request returned")
	}()
}

// Get returns a deployment by id.
func (m *Manager) Get(id string) (*Deployment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.byID[id]
	if !ok {
		return nil, fmt.Errorf("%w: deployment %q", ErrNotFound, id)
	}
	return d, nil
}

// Model returns the deployment serving name. version "" matches any; a
// deployment that is not serving is returned with ErrNotReady (ErrFailed
// when it failed).
func (m *Manager) Model(name, version string) (*Deployment, error) {
	m.mu.Lock()
	d, ok := m.byName[name]
	if !ok {
		// A failed deployment keeps answering for its name, so clients see
		// why; a stopped one was taken off on purpose: NotFound. Of several,
		// the one that failed last answers (always the same one).
		var last uint64
		for _, c := range m.byID {
			if c.spec.Name != name {
				continue
			}
			c.mu.RLock()
			failed, seq := c.state == Failed, c.seq
			c.mu.RUnlock()
			if failed && seq > last {
				d, ok, last = c, true, seq
			}
		}
	}
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: model %q", ErrNotFound, name)
	}
	if version != "" && version != d.spec.Version {
		return nil, fmt.Errorf("%w: model %s version %q (have %q)", ErrNotFound, name, version, d.spec.Version)
	}
	if st := d.Status(); !st.State.Serving() {
		if st.State == Failed {
			return d, fmt.Errorf("%w: %s is %s: %s", ErrFailed, name, st.State, st.Message)
		}
		return d, fmt.Errorf("%w: %s is %s", ErrNotReady, name, st.State)
	}
	return d, nil
}

// List returns every deployment sorted by id.
func (m *Manager) List() []*Deployment {
	m.mu.Lock()
	out := make([]*Deployment, 0, len(m.byID))
	for _, d := range m.byID {
		out = append(out, d)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// Restore starts every stored deployment whose desired state is running, and
// lists the stopped ones as Stopped. Call it once, before serving.
//
// Admission applies as it did to Assign, taking first the deployments that
// served before the restart and last those that had failed. A model name
// the operator's static models (assigned before) already serve stays
// theirs. Two stored deployments may want to serve one model name (one
// failed, and another id took the name): the one that served last wins,
// then the most recently updated. The others come back Failed, saying which deployment has the
// name. A record whose id a static model has is skipped.
func (m *Manager) Restore() error {
	if m.store == nil {
		return nil
	}
	recs, err := m.store.List()
	if errors.Is(err, store.ErrCorrupt) {
		// The others restore; the damaged ones stay in the store as they are.
		m.log.Error("restore: unreadable deployment records skipped", "err", err)
	} else if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	specs := make([]Spec, len(recs))
	invalid := make([]error, len(recs)) // specs this node no longer allows
	winner := map[string]int{}          // model name → index in recs
	for i, r := range recs {
		m.mu.Lock()
		_, taken := m.byID[r.ID]
		m.mu.Unlock()
		if taken {
			m.log.Error("restore: the id is a static model's; stored deployment skipped", "deployment", r.ID)
			recs[i].Spec = nil
			continue
		}
		if err := json.Unmarshal(r.Spec, &specs[i]); err != nil {
			m.log.Error("restore: unreadable spec; skipped", "deployment", r.ID, "err", err)
			recs[i].Spec = nil
			continue
		}
		if r.Desired != store.DesiredRunning {
			continue
		}
		// The node's limits may have changed since the spec was accepted
		// (fewer GPUs, no precise clocks, fewer guest pages, a format gone):
		// it is checked again as Assign would, and one that fails wins no
		// model name.
		specs[i] = specs[i].normal()
		if err := specs[i].validate(m.reg.Known, m.cfg); err != nil {
			invalid[i] = err
			continue
		}
		if w, ok := winner[specs[i].Name]; !ok || restoreBefore(r, recs[w]) {
			winner[specs[i].Name] = i
		}
	}
	// Admission takes them in the order they should keep their place: those
	// that served first, those that had failed last (a broken model the
	// Central Server has not stopped must not take a serving one's slot).
	order := make([]int, len(recs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return restoreRank(recs[order[a]]) < restoreRank(recs[order[b]]) })
	for _, i := range order {
		r := recs[i]
		if r.Spec == nil {
			continue // skipped above
		}
		spec := specs[i]
		d := m.newDeployment(r.ID, r.Owner, spec, r.Created)
		// Created is the record's; Updated is now (it starts again, or
		// fails now), or for a stopped one its last change.
		d.updated = time.Now()
		if r.Desired != store.DesiredRunning {
			if !r.Updated.IsZero() {
				d.updated = r.Updated
			}
			m.restoreIdle(d, Stopped, "stopped")
			continue
		}
		if err := invalid[i]; err != nil {
			m.restoreIdle(d, Failed, "not restored: "+err.Error())
			continue
		}
		if w := winner[spec.Name]; w != i {
			m.restoreIdle(d, Failed, fmt.Sprintf("not restored: model name %q is served by deployment %q", spec.Name, recs[w].ID))
			continue
		}
		m.mu.Lock()
		err := m.admitLocked(r.ID, spec)
		if other, ok := m.byName[spec.Name]; ok {
			err = fmt.Errorf("%w: model name %q is served by deployment %q", ErrExists, spec.Name, other.id)
		}
		if err != nil {
			m.mu.Unlock()
			m.restoreIdle(d, Failed, "not restored: "+err.Error())
			continue
		}
		d.message = "restored after restart"
		m.startLocked(d) // its goroutine publishes it
		m.mu.Unlock()
		m.log.Info("restored deployment", "deployment", r.ID, "model", spec.Name)
	}
	m.forgetOldFinished()
	return nil
}

// DefaultKeepStopped is how many stopped or failed deployments (see
// finished) the node remembers by default (in memory and in its store, for status and list calls and for
// a new spec under their id); older ones are forgotten, oldest first. A
// Central Server that assigns a new id per deployment made both grow
// without end, and every listing, snapshot and readiness check with them.
const DefaultKeepStopped = 256

// finished reports whether d is over: Stopped, or Failed and not the
// operator's (a node.toml model's id stays theirs).
func finished(d *Deployment) bool {
	st := d.State()
	return st == Stopped || st == Failed && d.owner != OwnerOperator
}

// forgetOldFinished forgets the finished deployments beyond KeepStopped,
// least recently updated first. One whose id an operation holds is left
// for a later call.
func (m *Manager) forgetOldFinished() {
	m.mu.Lock()
	var old []*Deployment
	for _, d := range m.byID {
		if finished(d) {
			old = append(old, d)
		}
	}
	m.mu.Unlock()
	keep := m.cfg.KeepStopped
	if keep <= 0 {
		keep = DefaultKeepStopped
	}
	if len(old) <= keep {
		return
	}
	updated := make(map[*Deployment]time.Time, len(old))
	for _, d := range old {
		updated[d] = d.Status().Updated
	}
	slices.SortFunc(old, func(a, b *Deployment) int { return updated[a].Compare(updated[b]) })
	forgot := 0
	for _, d := range old[:len(old)-keep] {
		unlock, ok := m.ops.tryLock(d.id)
		if !ok {
			continue
		}
		m.mu.Lock()
		gone := m.byID[d.id] == d && finished(d)
		if gone {
			delete(m.byID, d.id)
		}
		m.mu.Unlock()
		if gone && m.store != nil && d.owner != OwnerOperator {
			if err := m.store.Delete(d.id); err != nil && !errors.Is(err, store.ErrNotFound) {
				m.log.Warn("forget finished deployment", "deployment", d.id, "err", err)
			}
		}
		unlock()
		if gone {
			forgot++
		}
	}
	if forgot > 0 {
		m.log.Info("forgot the oldest finished deployments", "forgotten", forgot, "kept", keep)
	}
}

// restoreBefore reports whether a should serve a model name rather than b:
// the one whose last state was serving, then the more recently updated.
func restoreBefore(a, b store.Record) bool {
	as, _ := ParseState(a.State)
	bs, _ := ParseState(b.State)
	if as.Serving() != bs.Serving() {
		return as.Serving()
	}
	return a.Updated.After(b.Updated)
}

// restoreRank orders records for Restore's admission: 0 for one whose last
// state was serving, 2 for one that had failed, 1 for the others (stopped,
// or closed on its way up).
func restoreRank(r store.Record) int {
	switch st, _ := ParseState(r.State); {
	case st.Serving():
		return 0
	case st == Failed:
		return 2
	}
	return 1
}

// restoreIdle lists a restored deployment that does not run, in state
// (Stopped or Failed) with msg, without starting anything. A Failed one's
// reason is logged and stored.
func (m *Manager) restoreIdle(d *Deployment, state State, msg string) {
	d.state, d.message = state, msg
	close(d.done)
	d.cancel = func(error) {}
	m.mu.Lock()
	m.byID[d.id] = d
	m.mu.Unlock()
	if state == Failed {
		d.log.Error("deployment failed", "reason", msg)
		m.changed(d)
	}
}

// Flush makes every deployment run the requests it holds waiting for
// company (a queue delay, a preferred batch size, a batch policy) as soon
// as it can, and stop waiting from then on: the node is draining, and a
// request that waits out a delay longer than the drain fails unrun.
func (m *Manager) Flush() {
	m.flushed.Store(true)
	for _, d := range m.List() {
		d.mu.RLock()
		sched := d.sched
		d.mu.RUnlock()
		if sched != nil {
			sched.Flush()
		}
	}
}

// Close stops every deployment without changing what is stored, so that a
// restart restores them. It drains each within ctx.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	var wg sync.WaitGroup
	for _, d := range m.List() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-d.done
			// A Stop of d still draining holds its id: it finishes first
			// (Close waits for it within ctx, as for any model), rather
			// than Close finding nothing left to unload and returning.
			// Past ctx, this goroutine still waits for the id and unloads
			// d (at once, closing its model when its requests return):
			// one that gave up with the id (a guest swap that takes a
			// while to notice the node closing) left d's model, guests
			// and pins open for good.
			unlock, _ := m.ops.lock(context.WithoutCancel(ctx), d.id) // cannot fail
			defer unlock()
			m.unload(d, ctx)
		}()
	}
	// A model closes once its running requests return; one that cannot be
	// stopped (a run that ignores its context) must not hold the node's
	// shutdown past ctx: its goroutine is left to finish on its own.
	done := make(chan struct{})
	go func() {
		wg.Wait()
		m.wg.Wait()
		close(done)
	}()
	defer m.watch.close()
	select {
	case <-done:
		return ctx.Err()
	case <-ctx.Done():
		m.log.Warn("close: gave up waiting for models still loading or running requests", "err", ctx.Err())
		return fmt.Errorf("close deployments: %w", ctx.Err())
	}
}

// idLocks is a lock per deployment id, kept only while someone holds or
// waits for it. Waiting for one ends with the waiter's context: an Assign
// queued behind an hour-long drain gives up at its call's deadline.
type idLocks struct {
	mu    sync.Mutex
	locks map[string]*idLock
}

type idLock struct {
	held chan struct{} // capacity 1: full while held
	refs int           // holders and waiters
}

// tryLock locks id if no one holds it or waits for it.
func (l *idLocks) tryLock(id string) (unlock func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.locks[id] != nil {
		return nil, false
	}
	if l.locks == nil {
		l.locks = map[string]*idLock{}
	}
	k := &idLock{held: make(chan struct{}, 1), refs: 1}
	k.held <- struct{}{} // new: uncontended
	l.locks[id] = k
	return l.unlocker(id, k), true
}

// lock locks id and returns its unlock, or ctx's error (wrapped) if ctx
// ends while another holds it.
func (l *idLocks) lock(ctx context.Context, id string) (unlock func(), err error) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*idLock{}
	}
	k := l.locks[id]
	if k == nil {
		k = &idLock{held: make(chan struct{}, 1)}
		l.locks[id] = k
	}
	k.refs++
	l.mu.Unlock()
	select {
	case k.held <- struct{}{}: // free: taken even if ctx has ended
		return l.unlocker(id, k), nil
	default:
	}
	select {
	case k.held <- struct{}{}:
		return l.unlocker(id, k), nil
	case <-ctx.Done():
		l.release(id, k)
		return nil, fmt.Errorf("another operation on it is under way: %w", ctx.Err())
	}
}

// unlocker is the unlock of id's held lock k.
func (l *idLocks) unlocker(id string, k *idLock) func() {
	return func() {
		<-k.held
		l.release(id, k)
	}
}

// release drops a holder's or waiter's reference to id's lock k.
func (l *idLocks) release(id string, k *idLock) {
	l.mu.Lock()
	if k.refs--; k.refs == 0 {
		delete(l.locks, id)
	}
	l.mu.Unlock()
}
