package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// FormatGuest is the format name of a model implemented by a FORMAT guest.
const FormatGuest = "guest"

// pipeline is one version of a deployment's guests: requests flow
// preprocess → engine (native model) → postprocess. A deployment swaps its
// pipeline atomically; requests hold the version they started on (read
// lock), so the old guests close only after their last request.
type pipeline struct {
	mu     sync.RWMutex
	closed bool
	// retire starts, once, the wait for the requests on p; drained closes
	// when the last has left (see retired).
	retire  sync.Once
	drained chan struct{}

	pre, post, policy, format *guest.Pool
	pools                     []*guest.Pool
	modules                   []*guest.Module

	// inputs and outputs are what the guests facing clients declare
	// (guest.Signature): the preprocess (else FORMAT) guest's inputs, the
	// postprocess (else FORMAT) guest's outputs. nil: not declared, or no
	// such guest. Set before the pipeline serves (a FORMAT guest's under
	// the deployment's mu: see declareFormat), read-only after.
	inputs, outputs []loaders.TensorSpec
	// formatSig is what the FORMAT guest declares of its own tensors (the
	// model's, behind any preprocess or postprocess guest).
	formatSig guest.Signature
}

// enter takes a read hold on p; false if p was retired meanwhile.
//
// A pipeline being closed is not entered: close waits (as a writer) for
// the requests on it, and a new reader queued behind that writer could be
// the batcher those requests wait for (a deadlock until they time out).
func (p *pipeline) enter() bool {
	if !p.mu.TryRLock() {
		return false
	}
	if p.closed {
		p.mu.RUnlock()
		return false
	}
	return true
}

func (p *pipeline) leave() { p.mu.RUnlock() }

// retired closes p to new requests and returns a channel that closes once
// the last request on it has left.
func (p *pipeline) retired() <-chan struct{} {
	p.retire.Do(func() {
		p.drained = make(chan struct{})
		go func() { // ends when the last request on p leaves
			p.mu.Lock()
			p.closed = true
			p.mu.Unlock()
			close(p.drained)
		}()
	})
	return p.drained
}

// close waits for the requests on p, then closes its guests. If ctx ends
// first (a request that never returns), close returns and the guests close
// when the last of those requests leaves: a Stop must not hang on one.
func (p *pipeline) close(ctx context.Context) {
	if p == nil {
		return
	}
	drained := p.retired()
	closeGuests := func(ctx context.Context) {
		for _, pool := range p.pools {
			pool.Close(ctx)
		}
		for _, m := range p.modules {
			m.Close(ctx)
		}
	}
	select {
	case <-drained:
		closeGuests(ctx)
	case <-ctx.Done():
		go func() { // owned by the requests still on p: ends after them
			<-drained
			closeGuests(context.Background())
		}()
	}
}

var roleEntries = map[string][]guest.Entry{
	"preprocess":   {guest.EntryPreprocess},
	"postprocess":  {guest.EntryPostprocess},
	"batch_policy": {guest.EntryBatchPolicy},
	"format":       {guest.EntryFormatLoad, guest.EntryFormatInfer},
}

// buildPipeline compiles d's guests (paths by guest name) and starts their
// instance pools.
func (m *Manager) buildPipeline(ctx context.Context, d *Deployment, spec Spec, paths map[string]string) (_ *pipeline, err error) {
	p := &pipeline{}
	if len(spec.Guests) == 0 {
		return p, nil
	}
	if m.cfg.Guests == nil {
		return nil, errors.New("this node has no guest runtime: guests cannot run")
	}
	defer func() {
		if err != nil {
			p.close(context.Background())
		}
	}()
	for _, g := range spec.Guests {
		wasm, err := os.ReadFile(paths[g.Name])
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		mod, err := m.cfg.Guests.CompileLimited(ctx, wasm, g.MemoryLimitPages)
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		p.modules = append(p.modules, mod)
		var require []guest.Entry
		for _, r := range g.Roles {
			require = append(require, roleEntries[r]...)
		}
		instances := g.Instances
		if instances <= 0 {
			instances = m.cfg.GuestInstances
		}
		pool, err := m.cfg.Guests.NewPool(ctx, mod, guest.PoolConfig{
			Name:         d.id + "/" + g.Name,
			Instances:    instances,
			Require:      require,
			CallTimeout:  g.CallTimeout,
			PreciseClock: g.PreciseClock,
			Config:       spec.Config,
			Infer:        m.guestInfer(d, spec),
			Log:          d.log.With("guest", g.Name),
		})
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		p.pools = append(p.pools, pool)
		for _, r := range g.Roles {
			switch r {
			case "preprocess":
				p.pre = pool
			case "postprocess":
				p.post = pool
			case "batch_policy":
				p.policy = pool
			case "format":
				p.format = pool
			}
		}
	}
	// A FORMAT guest declares after format_load (declareFormat), in
	// whichever other roles it also takes.
	if p.pre != nil && p.pre != p.format {
		sig, _, err := p.pre.Signature(ctx)
		if err != nil {
			return nil, fmt.Errorf("preprocess guest: %w", err)
		}
		p.inputs = sig.Inputs
	}
	if p.post != nil && p.post != p.format {
		sig, _, err := p.post.Signature(ctx)
		if err != nil {
			return nil, fmt.Errorf("postprocess guest: %w", err)
		}
		p.outputs = sig.Outputs
	}
	return p, nil
}

// declareFormat takes what the FORMAT guest declares (after it loaded the
// model) for the sides no other preprocess or postprocess guest covers.
// p is d's pipeline already (unload closes it), whose sides Info reads
// under d.mu: they are set under it.
func (p *pipeline) declareFormat(ctx context.Context, d *Deployment) error {
	sig, _, err := p.format.Signature(ctx)
	if err != nil {
		return fmt.Errorf("format guest: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p.formatSig = sig
	// A guest that is its own preprocess (postprocess) guest declares
	// what clients send (get): the model's tensors behind that role are
	// undeclared.
	if p.pre == nil || p.pre == p.format {
		p.inputs = sig.Inputs
	}
	if p.pre == p.format {
		p.formatSig.Inputs = nil
	}
	if p.post == nil || p.post == p.format {
		p.outputs = sig.Outputs
	}
	if p.post == p.format {
		p.formatSig.Outputs = nil
	}
	return nil
}

// guestInfer lets d's guests run d's own model ("") or a deployment the
// spec allows.
func (m *Manager) guestInfer(d *Deployment, spec Spec) cyxwiz.InferFunc {
	return func(ctx context.Context, model string, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
		if model == "" || model == spec.Name {
			// A FORMAT guest is d's model: it would call itself, each
			// level holding an engine and a guest instance, until none
			// was left for the next (then wait for the deadline). A batch
			// policy runs in d's batcher, which its request would wait for.
			if id, _ := ctx.Value(engineCallKey{}).(string); id == d.id {
				return nil, fmt.Errorf("%w: deployment %s: a format or batch-policy guest runs inside model %q: it cannot run it", cyxwiz.ErrNotAllowed, d.id, spec.Name)
			}
			return d.inferNative(ctx, in, nil)
		}
		if !slices.Contains(spec.AllowedDeployments, model) {
			return nil, fmt.Errorf("%w: deployment %s may not call model %q (allowed: %v)", cyxwiz.ErrNotAllowed, d.id, model, spec.AllowedDeployments)
		}
		other, err := m.Model(model, "")
		if errors.Is(err, ErrNotFound) {
			// d serves: its client must not read NotFound for it.
			return nil, fmt.Errorf("%w: model %q, which deployment %s calls, is not deployed", ErrNotReady, model, d.id)
		}
		if err != nil {
			return nil, err
		}
		// A deployment already on the call chain would run its guests
		// again: a → b → a → b ... took an instance of each a level, then
		// waited, holding them all, for the caller's deadline.
		chain, _ := ctx.Value(callChainKey{}).([]string)
		if !slices.Contains(chain, d.id) {
			chain = append(slices.Clip(chain), d.id)
		}
		if slices.Contains(chain, other.id) {
			return nil, fmt.Errorf("%w: deployment %s may not call model %q: a call cycle (%s → %s)",
				cyxwiz.ErrNotAllowed, d.id, model, strings.Join(chain, " → "), other.id)
		}
		return other.Infer(context.WithValue(ctx, callChainKey{}, chain), in, nil)
	}
}

// batchValues gives a batch of requests, and a batch policy deciding
// about them, the call chains of them all (see engine.Config.BatchValues):
// a deployment on any one's chain must not be called again from it.
func batchValues(ctxs []context.Context) context.Context {
	var chain []string
	for _, ctx := range ctxs {
		c, _ := ctx.Value(callChainKey{}).([]string)
		for _, id := range c {
			if !slices.Contains(chain, id) {
				chain = append(chain, id)
			}
		}
	}
	if chain == nil {
		return context.Background()
	}
	return context.WithValue(context.Background(), callChainKey{}, chain)
}

// callChainKey keys the ids of the deployments whose guests are running a
// request, in call order, in the context of the models they call.
type callChainKey struct{}

// guestModel is a model implemented by a FORMAT guest: format_load ran on
// the model file, format_infer answers requests. id is the deployment's.
type guestModel struct {
	pool *guest.Pool
	id   string
	sig  guest.Signature // what the guest declares; batching relies on it
}

// engineCallKey keys, in the context of a format_infer or batch_policy
// call, the id of the deployment whose engine runs the guest.
type engineCallKey struct{}

func (g guestModel) Info() loaders.Info {
	return loaders.Info{Format: FormatGuest, Platform: "cyxwiz_guest", Inputs: g.sig.Inputs, Outputs: g.sig.Outputs}
}

func (g guestModel) Infer(ctx context.Context, in []*tensor.Tensor, names []string) ([]*tensor.Tensor, error) {
	outs, err := g.pool.FormatInfer(context.WithValue(ctx, engineCallKey{}, g.id), in)
	if err != nil {
		return nil, err
	}
	if err := checkDeclared(g.sig.Outputs, outs); err != nil {
		return nil, fmt.Errorf("format guest: %w", err)
	}
	return selectOutputs(outs, names, g.sig.Outputs)
}

// Close does nothing: the pool belongs to the pipeline.
func (g guestModel) Close() error { return nil }

var _ loaders.Model = guestModel{}

// checkDeclared refuses outputs that contradict what the guest that gave
// them declared: another datatype, rank or fixed dimension than the output
// of that name. Clients read the declaration in ModelMetadata and build on
// it: a guest breaking it is the guest's bad output, not the client's
// mistake. Outputs it did not declare are its own to return.
func checkDeclared(declared []loaders.TensorSpec, outs []*tensor.Tensor) error {
	for _, t := range outs {
		i := slices.IndexFunc(declared, func(s loaders.TensorSpec) bool { return s.Name == t.Name })
		if i < 0 {
			continue
		}
		s := declared[i]
		ok := t.DType == s.DType && (s.Shape == nil || len(s.Shape) == len(t.Shape))
		for k := 0; ok && s.Shape != nil && k < len(s.Shape); k++ {
			ok = s.Shape[k] < 0 || s.Shape[k] == t.Shape[k]
		}
		if !ok {
			return fmt.Errorf("%w: output %q is %v%v, the guest's signature says %v%v", guest.ErrBadOutput, t.Name, t.DType, t.Shape, s.DType, s.Shape)
		}
	}
	return nil
}

// selectOutputs keeps the named outputs, in the order asked; all when names
// is empty. declared is what the guest that gave outs declared of them: a
// declared output it did not give is its bad output, not an unknown one.
func selectOutputs(outs []*tensor.Tensor, names []string, declared []loaders.TensorSpec) ([]*tensor.Tensor, error) {
	if len(names) == 0 {
		return outs, nil
	}
	sel := make([]*tensor.Tensor, 0, len(names))
	for _, n := range names {
		i := slices.IndexFunc(outs, func(t *tensor.Tensor) bool { return t.Name == n })
		if i < 0 {
			have := make([]string, len(outs))
			for j, t := range outs {
				have[j] = t.Name
			}
			if slices.ContainsFunc(declared, func(s loaders.TensorSpec) bool { return s.Name == n }) {
				return nil, fmt.Errorf("%w: the guest declares output %q and did not return it (outputs: %v)", guest.ErrBadOutput, n, have)
			}
			return nil, fmt.Errorf("%w: unknown output %q (outputs: %v)", loaders.ErrInvalidInput, n, have)
		}
		sel = append(sel, outs[i])
	}
	return sel, nil
}

// batchPolicy asks the current pipeline's batch-policy guest; with none (it
// was swapped out) the batch runs.
func (d *Deployment) batchPolicy(ctx context.Context, q engine.QueueState) (engine.Decision, error) {
	p := d.enterPipeline()
	if p == nil {
		return engine.Decision{Run: q.Queued}, nil
	}
	defer p.leave()
	if p.policy == nil {
		return engine.Decision{Run: q.Queued}, nil
	}
	ctx = context.WithValue(ctx, engineCallKey{}, d.id)
	dec, err := p.policy.BatchPolicy(ctx, guest.QueueState{Queued: q.Queued, OldestWait: q.OldestWait, Rows: q.Rows, MaxBatch: q.MaxBatch})
	return engine.Decision{Run: dec.Run, Wait: dec.Wait}, err
}

// swappable reports whether next differs from cur only in its pre/post or
// batch-policy guests (and their config), so that it can replace them on the
// live deployment without reloading the model. A FORMAT guest holds the
// model, and adding or removing a batch policy changes the engine: those
// need a new deployment.
func swappable(cur, next Spec) bool {
	role := func(s Spec, r string) bool {
		return slices.ContainsFunc(s.Guests, func(g Guest) bool { return slices.Contains(g.Roles, r) })
	}
	if role(cur, "format") || role(next, "format") || role(cur, "batch_policy") != role(next, "batch_policy") {
		return false
	}
	a, b := cur, next
	a.Guests, b.Guests, a.Config, b.Config = nil, nil, nil, nil
	return a.Equal(b)
}

// swapGuests fetches and starts next's guests, then makes them serve new
// requests; requests in flight finish on the old guests, which close after
// the last of them.
//
// The caller holds d's id lock: a Stop cancels the swap, then waits for it.
// The deployment keeps serving, in its state, while the new guests are
// fetched and compiled; if the node shuts down meanwhile, the new guests are
// closed, not installed.
func (m *Manager) swapGuests(caller context.Context, d *Deployment, next Spec) (Status, error) {
	// The swap ends with the caller (who would not hear of it), the node,
	// or the fetch timeout.
	ctx, cancel := context.WithTimeout(caller, m.fetchTimeout())
	defer context.AfterFunc(m.ctx, cancel)()
	d.mu.Lock()
	if d.stopping > 0 {
		d.mu.Unlock()
		cancel()
		return Status{}, fmt.Errorf("swap guests of %s: %w: it is being stopped", d.id, ErrNotReady)
	}
	d.swapCancel = cancel
	pinned := len(d.pins) // the pins this swap takes come after
	oldGuests := d.spec.Guests
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.swapCancel = nil
		d.mu.Unlock()
		cancel()
	}()
	paths, err := m.fetchGuests(ctx, d, next)
	if err != nil {
		m.unpinSince(d, pinned)
		return Status{}, m.swapFailed(ctx, d, err)
	}
	pipe, err := m.buildPipeline(ctx, d, next, paths)
	if err != nil {
		m.unpinSince(d, pinned)
		return Status{}, m.swapFailed(ctx, d, err)
	}
	// Install under m.mu: Close sets m.closed under it and unloads after,
	// so it either sees the new pipeline or this sees closed.
	old, err := m.installGuests(d, next, pipe)
	if err != nil {
		pipe.close(context.Background())
		m.unpinSince(d, pinned)
		return Status{}, fmt.Errorf("swap guests of %s: %w", d.id, err)
	}
	// The replaced guests' artifacts may leave the cache now.
	for _, g := range oldGuests {
		if m.unpin(d, g.Artifact.SHA256, pinned) {
			pinned-- // the pins from before the swap are one fewer
		}
	}
	go func() { // counted in m.wg by installGuests
		defer m.wg.Done()
		old.close(m.ctx) // waits for the requests still on it, or for Close
	}()
	d.log.Info("guests swapped", "guests", len(next.Guests))
	m.changed(d)
	return d.Status(), nil
}

// swapFailed is the error of d's swap that failed with err. One that a
// Stop of d or the node closing cut short says so, not that it was
// cancelled: its caller cancelled nothing.
func (m *Manager) swapFailed(ctx context.Context, d *Deployment, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		d.mu.RLock()
		stopping := d.stopping > 0
		d.mu.RUnlock()
		switch {
		case m.ctx.Err() != nil:
			return fmt.Errorf("swap guests of %s: %w (%v)", d.id, ErrClosed, err)
		case stopping:
			return fmt.Errorf("swap guests of %s: %w: it is being stopped (%v)", d.id, ErrNotReady, err)
		}
	}
	return fmt.Errorf("swap guests of %s: %w", d.id, err)
}

// installGuests makes pipe d's pipeline and stores next as d's spec, unless
// the node is closing or d no longer serves. It returns the pipeline it
// replaced, whose closing it has counted in m.wg (before Close can wait).
func (m *Manager) installGuests(d *Deployment, next Spec, pipe *pipeline) (*pipeline, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if st := d.State(); m.byID[d.id] != d || !st.Serving() {
		return nil, fmt.Errorf("%w: deployment is %v", ErrNotReady, st)
	}
	if m.store != nil && d.owner != OwnerOperator {
		raw, err := json.Marshal(next)
		if err == nil {
			err = m.store.Update(d.id, func(r *store.Record) error { r.Spec = raw; return nil })
		}
		if err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	d.spec.Guests, d.spec.Config = next.Guests, next.Config // the rest is equal (swappable)
	d.bump()
	d.mu.Unlock()
	m.wg.Add(1)
	return d.pipe.Swap(pipe), nil
}

// fetchGuests fetches next's guests for a swap, within the node's limit on
// concurrent fetches. The deployment's state does not change: it serves on.
func (m *Manager) fetchGuests(ctx context.Context, d *Deployment, next Spec) (map[string]string, error) {
	// Pinned before waiting for a fetch slot (see bringUp); the caller
	// releases these pins if the swap fails.
	for _, g := range next.Guests {
		if err := m.pin(d, g.Artifact); err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
	}
	if err := acquire(ctx, m.fetchSem); err != nil {
		return nil, err
	}
	defer release(m.fetchSem)
	paths := map[string]string{}
	for _, g := range next.Guests {
		a := g.Artifact
		if m.cfg.MaxArtifactSize > 0 {
			a.MaxSize = m.cfg.MaxArtifactSize
		}
		path, err := m.fetch(ctx, d, a, nil)
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.Name, err)
		}
		paths[g.Name] = path
	}
	return paths, nil
}

func (m *Manager) fetchTimeout() time.Duration {
	if m.cfg.FetchTimeout > 0 {
		return m.cfg.FetchTimeout
	}
	return 30 * time.Minute
}

// unpinSince releases the pins d took from index from on (a swap that
// failed).
func (m *Manager) unpinSince(d *Deployment, from int) {
	d.mu.Lock()
	if from > len(d.pins) {
		from = len(d.pins)
	}
	taken := slices.Clone(d.pins[from:])
	d.pins = d.pins[:from]
	d.mu.Unlock()
	for _, p := range taken {
		if m.cache != nil {
			m.cache.Release(p)
		}
	}
}

// unpin releases one of d's pins of digest among its first before pins
// (those from before a swap): a replaced guest's. It reports whether it
// found one.
func (m *Manager) unpin(d *Deployment, digest string, before int) bool {
	if digest == "" {
		return false
	}
	d.mu.Lock()
	i := slices.Index(d.pins[:min(before, len(d.pins))], digest)
	if i >= 0 {
		d.pins = slices.Delete(d.pins, i, i+1)
	}
	d.mu.Unlock()
	if i >= 0 && m.cache != nil {
		m.cache.Release(digest)
	}
	return i >= 0
}
