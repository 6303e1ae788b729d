// Package engine runs one deployment's inference requests on its loaded
// model: a bounded queue in front of a fixed number of instances (worker
// goroutines), and, when the model takes a leading batch dimension, a dynamic
// batcher in the manner of Triton's that joins compatible requests into one
// execution and splits the outputs back to each caller.
//
//	s, err := engine.New("resnet50", model, engine.Config{MaxBatchSize: 32, Instances: 2}, log)
//	if err != nil { ... }
//	defer s.Close(ctx)
//	outs, err := s.Infer(ctx, engine.Request{Inputs: inputs})
//
// The engine takes and returns Go values; it knows nothing of gRPC or of the
// loaders that produced the model.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Errors a caller branches on; the engine wraps them with context.
var (
	// ErrQueueFull: the deployment's queue holds Config.QueueCapacity
	// requests already; the request was rejected at once.
	ErrQueueFull = errors.New("queue full")
	// ErrClosed: the scheduler is closed, or closing gave up on the request.
	ErrClosed = errors.New("scheduler closed")
	// ErrInvalidRequest: the request cannot be scheduled as given (a nil
	// input, data that does not match its shape, more rows than
	// Config.MaxBatchSize).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrInvalidConfig: New was given a Config that fails Validate.
	ErrInvalidConfig = errors.New("invalid engine config")
	// ErrModelPanic: the model panicked while running the request.
	ErrModelPanic = errors.New("model panicked")
)

// Model is what the engine needs from a loaded model. Infer must be safe for
// concurrent use when Config.Instances > 1.
type Model interface {
	// Infer runs the model on the inputs and returns the requested outputs
	// (all of them when outputs is empty).
	Infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error)
}

// InputReleaser is a Model that keeps no reference to its inputs' memory
// once Infer has returned, except as memory its outputs share. For such a
// model each batching worker reuses its batch buffers (up to 16 MiB each)
// from one batch to the next (fresh memory costs a page fault per 4 KiB,
// more than the copy into it); an output that shares a buffer takes it
// away from the worker. Any other model gets new buffers for every batch.
type InputReleaser interface {
	Model
	ReleasesInputs() bool
}

// Request is one call's inputs and wanted outputs.
//
// With batching on (Config.MaxBatchSize > 1), a request whose inputs all have
// rank >= 1 and the same dimension 0 (its rows, >= 1) is batchable: it may run
// together with other requests that have the same input names in the same
// order, the same dtypes, ranks and trailing dimensions, and the same
// Outputs. A request without such a common leading dimension is run alone, as
// given, and the model decides whether it is valid.
//
// The engine does not modify the inputs, and the caller must not either
// until Infer returns. If Infer returns early because its context ended while
// the request was already executing, the model may still be reading them.
type Request struct {
	Inputs []*tensor.Tensor
	// Outputs names the outputs wanted; nil or empty means all.
	Outputs []string
}

// Request states. A request moves from queued to exactly one of the others,
// by compare-and-swap, so that it either runs or is cancelled, never both.
const (
	stateQueued    uint32 = iota
	stateRunning          // claimed by a worker (or failed by shutdown): a result will be delivered
	stateCancelled        // its caller gave up; it never reaches the model
)

// request is one Infer call in flight. Requests are pooled: one is reused only
// after its result was delivered and read.
type request struct {
	ctx      context.Context
	inputs   []*tensor.Tensor
	outputs  []string
	enqueued time.Time
	rows     int    // dimension 0; 1 for a request run alone
	sig      uint64 // hash of what must match to batch; 0 if not batchable
	batch    bool   // batchable with others

	state atomic.Uint32
	done  chan struct{} // capacity 1: the worker never blocks delivering
	outs  []*tensor.Tensor
	err   error
}

// Scheduler queues one deployment's requests and runs them on its model,
// batching them when the configuration allows. It is safe for concurrent use.
type Scheduler struct {
	name      string
	model     Model
	cfg       Config
	log       *slog.Logger
	preferred []bool // preferred[rows]; nil without preferred sizes

	mu     sync.RWMutex // orders sends on reqCh before its close
	closed bool
	reqCh  chan *request // Infer → batcher (or workers without batching)

	workCh chan *batch // batcher → workers; capacity Instances
	// slots holds one token per idle instance: a worker (or the batcher on
	// its behalf) or an inline caller takes one to run and puts it back.
	slots chan struct{}
	// reuse: batching workers reuse their input buffers (InputReleaser).
	reuse bool
	// inline: a request that finds nothing queued and an instance idle runs
	// on its caller's goroutine (no batching, or no delay or policy that
	// could have batched it).
	inline bool

	queued atomic.Int64 // accepted and not yet handed to a worker

	// flushing: Flush was called; batches wait for no delay or policy.
	// flushCh wakes the batcher to look again.
	flushing atomic.Bool
	flushCh  chan struct{}

	runCtx  context.Context // cancelled when Close gives up: fail what is queued
	cancel  context.CancelFunc
	live    atomic.Int32  // goroutines still running
	stopped chan struct{} // closed by the last goroutine to exit

	reqPool   sync.Pool
	batchPool sync.Pool
	stats     counters
}

// New validates cfg, fills its defaults and starts the scheduler's goroutines:
// Instances workers, plus one batcher when batching is on. Close stops them.
// log should name the deployment (its lines add no key of their own for
// it); a nil log discards.
func New(name string, m Model, cfg Config, log *slog.Logger) (*Scheduler, error) {
	if m == nil {
		return nil, fmt.Errorf("engine %s: nil model: %w", name, ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("engine %s: %w", name, err)
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scheduler{
		name:  name,
		model: m,
		cfg:   cfg,
		log:   log, // the caller names the deployment (deploy gives its id and model)
		// Room beyond the capacity: requests whose callers gave up stay in
		// the channel, uncounted, until the batcher or a worker drops them
		// (or a sender finding it full, see compact).
		reqCh:   make(chan *request, 2*cfg.QueueCapacity),
		stopped: make(chan struct{}),
	}
	s.reqPool.New = func() any { return &request{done: make(chan struct{}, 1)} }
	s.batchPool.New = func() any { return &batch{reqs: make([]*request, 0, 8)} }
	hist := 2
	if cfg.batching() {
		hist = cfg.MaxBatchSize + 1
	}
	s.stats.hist = make([]atomic.Uint64, hist)
	if len(cfg.PreferredBatchSizes) > 0 {
		s.preferred = make([]bool, cfg.MaxBatchSize+1)
		for _, p := range cfg.PreferredBatchSizes {
			s.preferred[p] = true
		}
	}
	s.runCtx, s.cancel = context.WithCancel(context.Background())
	s.flushCh = make(chan struct{}, 1)
	s.slots = make(chan struct{}, cfg.Instances)
	for range cfg.Instances {
		s.slots <- struct{}{}
	}
	// Without batching a request waits for no company: the delay and the
	// policy do not apply.
	s.inline = !cfg.batching() || cfg.MaxQueueDelay == 0 && cfg.Policy == nil
	if r, ok := m.(InputReleaser); ok {
		s.reuse = r.ReleasesInputs()
	}

	if cfg.batching() {
		s.workCh = make(chan *batch, cfg.Instances)
		s.live.Store(int32(cfg.Instances) + 1)
		go s.batchLoop()
		for range cfg.Instances {
			go s.workLoop()
		}
	} else {
		s.live.Store(int32(cfg.Instances))
		for range cfg.Instances {
			go s.soloLoop()
		}
	}
	s.log.Debug("engine started",
		"max_batch_size", cfg.MaxBatchSize, "preferred_batch_sizes", cfg.PreferredBatchSizes,
		"max_queue_delay", cfg.MaxQueueDelay, "queue_capacity", cfg.QueueCapacity, "instances", cfg.Instances)
	return s, nil
}

// Infer queues req and waits for its outputs. When nothing is queued, an
// instance is idle and no queue delay or batch policy could make the
// request wait for company, it runs at once on the caller's goroutine
// instead (the same execution a worker would do, without two goroutine
// hand-offs). It fails at once with ErrQueueFull when the queue is full,
// ErrClosed after Close, and ErrInvalidRequest for a request the scheduler
// cannot take. If ctx ends first, Infer returns ctx.Err() (wrapped); a
// request still queued at that point is dropped and never reaches the
// model.
//
// A batched request's outputs are rows of the batch's output tensors: they
// share memory with the other callers' rows (see tensor.Split) but never
// overlap them.
func (s *Scheduler) Infer(ctx context.Context, req Request) ([]*tensor.Tensor, error) {
	s.stats.requests.Add(1)
	if err := ctx.Err(); err != nil {
		s.stats.cancelled.Add(1)
		return nil, fmt.Errorf("engine %s: %w", s.name, err)
	}
	r := s.reqPool.Get().(*request)
	r.ctx, r.inputs, r.outputs = ctx, req.Inputs, req.Outputs
	r.state.Store(stateQueued)
	if err := s.classify(r); err != nil {
		s.recycle(r)
		s.stats.failures.Add(1)
		return nil, err
	}
	r.enqueued = time.Now()
	if s.inline && s.queued.Load() == 0 {
		select {
		case <-s.slots:
			if outs, ran, err := s.runInline(r); ran {
				s.recycle(r)
				return outs, err
			}
		default:
		}
	}
	if err := s.enqueue(r); err != nil {
		s.recycle(r)
		s.stats.failures.Add(1)
		return nil, err
	}
	select {
	case <-r.done:
		outs, err := r.outs, r.err
		s.recycle(r)
		if err != nil {
			// A run that failed as its context ended (the model stopped
			// on it) is a cancellation, as for an inline run: which of
			// the two Infer saw first is chance.
			if ctxErr := ctx.Err(); ctxErr != nil {
				s.stats.cancelled.Add(1)
				return nil, fmt.Errorf("engine %s: %w", s.name, ctxErr)
			}
			s.stats.failures.Add(1)
		}
		return outs, err
	case <-ctx.Done():
		// Either this stops the request before a worker claims it, or it is
		// running already and its result will be dropped. The request is not
		// recycled: a worker or the batcher may still hold it.
		s.dequeue(r, stateCancelled)
		s.stats.cancelled.Add(1)
		return nil, fmt.Errorf("engine %s: %w", s.name, ctx.Err())
	}
}

// runInline runs r on the caller's goroutine with the instance slot the
// caller took, and puts the slot back. It does not run (ran false, slot put
// back) once the scheduler is closed: enqueue then reports that. While it
// runs it counts as one of the scheduler's goroutines, so Close waits for
// it. A running request returns when the model does: models stop early on
// their context (ONNX Runtime terminates the run).
func (s *Scheduler) runInline(r *request) (outs []*tensor.Tensor, ran bool, err error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		s.slots <- struct{}{}
		return nil, false, nil
	}
	s.live.Add(1)
	s.mu.RUnlock()
	defer s.exit()
	start := time.Now()
	s.stats.queueNs.Add(int64(start.Sub(r.enqueued)))
	outs, err = s.infer(r.ctx, r.inputs, r.outputs)
	s.slots <- struct{}{}
	s.stats.record(r.rows, time.Since(start))
	if err != nil {
		if ctxErr := r.ctx.Err(); ctxErr != nil {
			s.stats.cancelled.Add(1)
			return nil, true, fmt.Errorf("engine %s: %w", s.name, ctxErr)
		}
		s.stats.failures.Add(1)
		err = fmt.Errorf("engine %s: %w", s.name, err)
	}
	return outs, true, err
}

// enqueue hands r to the batcher or the workers without blocking.
func (s *Scheduler) enqueue(r *request) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("engine %s: %w", s.name, ErrClosed)
	}
	if s.queued.Add(1) > int64(s.cfg.QueueCapacity) {
		s.mu.RUnlock()
		s.queued.Add(-1)
		s.stats.queueFull.Add(1)
		return fmt.Errorf("engine %s: %d requests waiting: %w", s.name, s.cfg.QueueCapacity, ErrQueueFull)
	}
	// The channel holds the counted requests (at most QueueCapacity) and
	// abandoned ones not yet dropped. The send never blocks.
	select {
	case s.reqCh <- r:
		s.mu.RUnlock()
		return nil
	default:
	}
	s.mu.RUnlock()
	// Full: at least QueueCapacity of the requests in it are abandoned
	// (without batching they wait there while every instance is busy).
	// Drop them and try again.
	if err := s.compact(r); err != nil {
		s.queued.Add(-1)
		return err
	}
	return nil
}

// compact removes the abandoned requests from reqCh, keeping the others in
// their order, then sends r. It holds s.mu for writing, so that no other
// sender (nor Close) runs meanwhile; workers may still take requests.
func (s *Scheduler) compact(r *request) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("engine %s: %w", s.name, ErrClosed)
	}
	live := make([]*request, 0, len(s.reqCh))
drain:
	for range cap(s.reqCh) {
		select {
		case q := <-s.reqCh:
			if q.state.Load() == stateQueued {
				live = append(live, q)
			}
		default:
			break drain
		}
	}
	// Nobody else sends while s.mu is held: the live ones fit back.
	for _, q := range live {
		s.reqCh <- q
	}
	select {
	case s.reqCh <- r:
		return nil
	default:
		s.stats.queueFull.Add(1)
		return fmt.Errorf("engine %s: %d requests waiting: %w", s.name, len(live), ErrQueueFull)
	}
}

// dequeue moves r out of stateQueued into to, and reports whether it did.
// Whoever moves a request out of stateQueued uncounts it, at that moment: a
// queue of abandoned requests must not turn live ones away.
func (s *Scheduler) dequeue(r *request, to uint32) bool {
	if r.state.CompareAndSwap(stateQueued, to) {
		s.queued.Add(-1)
		return true
	}
	return false
}

// recycle returns a request whose result was read (or that never left Infer)
// to the pool.
func (s *Scheduler) recycle(r *request) {
	r.ctx, r.inputs, r.outputs, r.outs, r.err = nil, nil, nil, nil, nil
	s.reqPool.Put(r)
}

// classify checks a request for batching and works out its rows and
// signature. Without batching it only resets them: the request runs as given.
func (s *Scheduler) classify(r *request) error {
	r.rows, r.sig, r.batch = 1, 0, false
	if !s.cfg.batching() {
		return nil
	}
	rows := int64(-1)
	batchable := len(r.inputs) > 0
	for i, in := range r.inputs {
		if in == nil {
			return fmt.Errorf("engine %s: input %d is nil: %w", s.name, i, ErrInvalidRequest)
		}
		switch {
		case len(in.Shape) == 0:
			batchable = false
		case rows < 0:
			rows = in.Shape[0]
		case in.Shape[0] != rows:
			batchable = false
		}
	}
	if !batchable || rows < 1 {
		return nil // no common batch dimension: run alone, as given
	}
	for _, in := range r.inputs {
		if err := in.Validate(); err != nil {
			return fmt.Errorf("engine %s: %w: %w", s.name, ErrInvalidRequest, err)
		}
	}
	if rows > int64(s.cfg.MaxBatchSize) {
		return fmt.Errorf("engine %s: request has %d rows, max_batch_size is %d: %w", s.name, rows, s.cfg.MaxBatchSize, ErrInvalidRequest)
	}
	r.rows, r.sig, r.batch = int(rows), signature(r), true
	return nil
}

// Close stops accepting requests (Infer then fails with ErrClosed), lets the
// queued and running ones finish — a batch still waiting for MaxQueueDelay
// runs at once — and returns when every goroutine has stopped.
//
// If ctx ends first, Close fails the requests still queued with ErrClosed,
// cancels the context of running batches, and returns ctx.Err() without
// waiting further; workers exit as soon as the model calls they are in
// return. Close may be called more than once.
func (s *Scheduler) Close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.reqCh)
	}
	s.mu.Unlock()
	select {
	case <-s.stopped:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.log.Warn("engine close gave up; failing queued requests", "queued", s.queued.Load(), "err", ctx.Err())
		s.cancel()
		if !s.cfg.batching() {
			// The workers may all be stuck in the model: empty the queue
			// here. (With batching the batcher does it.)
			err := s.closedErr()
			for r := range s.reqCh {
				s.fail(r, err)
			}
		}
		return fmt.Errorf("engine %s: close: %w", s.name, ctx.Err())
	}
}

// Flush makes the batches waiting for company (a max_queue_delay, a
// preferred size, a batch policy) run as soon as an instance is free, and
// later ones too: the node is draining, and a request waiting out a delay
// longer than the drain would fail unrun. Requests are still taken.
func (s *Scheduler) Flush() {
	if s.flushing.Swap(true) {
		return
	}
	select {
	case s.flushCh <- struct{}{}:
	default:
	}
}

// exit is deferred by every goroutine the scheduler starts.
func (s *Scheduler) exit() {
	if s.live.Add(-1) == 0 {
		close(s.stopped)
	}
}

// closedErr is delivered to requests that Close gave up on.
func (s *Scheduler) closedErr() error {
	return fmt.Errorf("engine %s: closed before the request ran: %w", s.name, ErrClosed)
}

// signature hashes what two requests must share to be batched together
// (FNV-1a); compatible confirms a match.
func signature(r *request) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	str := func(s string) {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * prime
		}
		h = (h ^ 0xff) * prime
	}
	num := func(v uint64) { h = (h ^ v) * prime }
	for _, in := range r.inputs {
		str(in.Name)
		num(uint64(in.DType))
		num(uint64(len(in.Shape)))
		for _, d := range in.Shape[1:] {
			num(uint64(d))
		}
	}
	num(uint64(len(r.outputs)))
	for _, o := range r.outputs {
		str(o)
	}
	return h
}

// compatible reports whether a and b, both batchable, can share a batch.
func compatible(a, b *request) bool {
	if a.sig != b.sig || len(a.inputs) != len(b.inputs) || len(a.outputs) != len(b.outputs) {
		return false
	}
	for i, x := range a.inputs {
		y := b.inputs[i]
		if x.Name != y.Name || x.DType != y.DType || len(x.Shape) != len(y.Shape) {
			return false
		}
		for d := 1; d < len(x.Shape); d++ {
			if x.Shape[d] != y.Shape[d] {
				return false
			}
		}
	}
	for i, o := range a.outputs {
		if o != b.outputs[i] {
			return false
		}
	}
	return true
}
