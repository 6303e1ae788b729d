package engine

import (
	"context"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// batch is a group of compatible requests, in arrival order, that will run as
// one execution. The batcher owns it until it is sent on workCh, then the
// worker does.
type batch struct {
	reqs   []*request
	rows   int
	sealed bool // no request may join: it is full, or runs alone
	// waitUntil is when a Policy that said "wait" is asked again, unless
	// a request joins the batch first.
	waitUntil time.Time
}

func (s *Scheduler) newBatch() *batch { return s.batchPool.Get().(*batch) }

func (s *Scheduler) freeBatch(b *batch) {
	clear(b.reqs[:cap(b.reqs)])
	b.reqs, b.rows, b.sealed, b.waitUntil = b.reqs[:0], 0, false, time.Time{}
	s.batchPool.Put(b)
}

// batchLoop is the batcher. It moves requests from reqCh into pending
// batches, one open batch per signature, and hands a batch to a worker when
// one is free and the batch is due (see take). While every worker is busy it
// only keeps filling batches. A timer runs only while a worker is free and a
// batch waits for MaxQueueDelay.
//
// After Close it drains reqCh, runs everything pending without waiting for
// delays, closes workCh and exits; if Close gives up (runCtx cancelled) it
// fails everything pending instead.
func (s *Scheduler) batchLoop() {
	defer s.exit()
	var (
		pending []*batch  // by oldest request (see requeue)
		held    int       // instance slots taken from s.slots, not yet used
		in      = s.reqCh // nil once closed and drained
		timer   waker     // made when first needed
		timerC  <-chan struct{}
		armed   time.Time // the deadline timer is set for; zero when not set
		added   int       // requests added since pending was last swept
	)
	defer func() {
		if timer != nil {
			timer.Close()
		}
		for ; held > 0; held-- {
			s.slots <- struct{}{}
		}
	}()
	for {
		if len(pending) > 0 {
			var now time.Time
			if (s.cfg.MaxQueueDelay > 0 || s.cfg.Policy != nil) && in != nil {
				now = time.Now()
			}
			for {
				if held == 0 {
					select {
					case <-s.slots:
						held++
					default:
					}
				}
				if held == 0 {
					break
				}
				// Instances idle besides the one in hand: a due batch is
				// shared out among them rather than run on one.
				idle := held + len(s.slots)
				b := s.next(&pending, now, in == nil || s.flushing.Load(), idle)
				if b == nil {
					break
				}
				s.workCh <- b // at most Instances batches are out: never blocks
				held--
			}
		}
		if len(pending) == 0 {
			// Nothing waits: an idle instance belongs to the inline callers.
			for ; held > 0; held-- {
				s.slots <- struct{}{}
			}
			if in == nil {
				close(s.workCh)
				return
			}
		}

		// Batches left: with an instance in hand, they wait for their delay
		// (or for more rows): wake up when the earliest one is due; without
		// one, wait for an instance.
		timerC = nil
		var slotC chan struct{}
		if len(pending) > 0 {
			if held == 0 {
				slotC = s.slots
			} else {
				due := s.due(pending)
				if !due.Equal(armed) {
					if timer == nil {
						timer = newWaker()
					}
					timer.Reset(time.Until(due))
					armed = due
				}
				timerC = timer.C()
			}
		}

		select {
		case r, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			s.add(&pending, r)
			// Requests whose callers gave up are dropped when their batch
			// is looked at, which waits for an idle instance: sweep them
			// out every QueueCapacity additions, so that they (and their
			// inputs) stay bounded however long the instances are busy.
			if added++; added > s.cfg.QueueCapacity {
				pending = s.sweep(pending)
				added = 0
			}
		case <-slotC:
			held++
		case <-timerC:
			armed = time.Time{}
		case <-s.flushCh: // look again: every batch is due
		case <-s.runCtx.Done():
			s.abort(pending)
			close(s.workCh)
			return
		}
	}
}

// add puts r into the newest open batch it is compatible with and fits in, or
// starts a new batch. A batch that a compatible request does not fit in is
// sealed: it will not grow any more, so it is due at once.
func (s *Scheduler) add(pending *[]*batch, r *request) {
	if r.state.Load() != stateQueued { // abandoned in reqCh (its caller uncounted it)
		return
	}
	p := *pending
	if r.batch {
		for i := len(p) - 1; i >= 0; i-- {
			b := p[i]
			if b.sealed || !compatible(b.reqs[0], r) {
				continue
			}
			if b.rows+r.rows <= s.cfg.MaxBatchSize {
				b.reqs = append(b.reqs, r)
				b.rows += r.rows
				// A Policy that said "wait" is asked again: it has not
				// seen this request.
				b.waitUntil = time.Time{}
				return
			}
			b.sealed = true
			break
		}
	}
	b := s.newBatch()
	b.reqs = append(b.reqs, r)
	b.rows = r.rows
	b.sealed = !r.batch || b.rows >= s.cfg.MaxBatchSize
	*pending = append(p, b)
}

// next removes and returns the first pending batch that is due, or its due
// prefix, dropping cancelled requests on the way; nil when none is due.
// pending is kept in the order of each batch's oldest request.
// With idle instances (counting the one that will run it), no Policy and
// not a preferred size, a batch due whole goes out in idle shares: its first share now, the rest
// (sealed, due at once) to the next idle instances. A closed loop of as many
// clients as max_batch_size would otherwise fill one batch, run it on one
// instance and leave the others idle, call after call.
func (s *Scheduler) next(pending *[]*batch, now time.Time, draining bool, idle int) *batch {
	p := *pending
	defer func() { *pending = p }()
	for i := 0; i < len(p); i++ {
		b := p[i]
		head := b.reqs[0]
		s.prune(b)
		if len(b.reqs) == 0 {
			p = slices.Delete(p, i, i+1)
			i--
			s.freeBatch(b)
			continue
		}
		if b.reqs[0] != head && requeue(p, i) {
			i-- // p[i] is another batch now; b comes again later
			continue
		}
		n := s.take(b, now, draining)
		if n == 0 {
			continue
		}
		if n == len(b.reqs) && idle > 1 && s.cfg.Policy == nil && !s.preferredSize(b.rows) {
			if share := (n + idle - 1) / idle; share < n {
				n = share
				b.sealed = true // the rest is due too
			}
		}
		out := b
		if n == len(b.reqs) {
			p = slices.Delete(p, i, i+1)
		} else {
			out = s.newBatch()
			out.reqs = append(out.reqs, b.reqs[:n]...)
			for _, r := range out.reqs {
				out.rows += r.rows
			}
			b.reqs = slices.Delete(b.reqs, 0, n)
			b.rows -= out.rows
			requeue(p, i)
		}
		return out // its requests leave the count when a worker claims them
	}
	return nil
}

// requeue moves p[i], whose oldest request has left it, behind the batches
// whose oldest request is older, and reports whether it moved. Batches are
// looked at oldest request first, as Triton takes requests in arrival order:
// a batch that keeps giving preferred-size prefixes must not keep its place
// ahead of an older one that waits for its delay.
func requeue(p []*batch, i int) bool {
	b := p[i]
	j := i
	for j+1 < len(p) && !p[j+1].reqs[0].enqueued.After(b.reqs[0].enqueued) {
		j++
	}
	if j == i {
		return false
	}
	copy(p[i:j], p[i+1:j+1])
	p[j] = b
	return true
}

// preferredSize says whether rows is one of the preferred batch sizes:
// such a batch is not shared out among instances.
func (s *Scheduler) preferredSize(rows int) bool {
	return s.preferred != nil && rows < len(s.preferred) && s.preferred[rows]
}

// take says how many of b's leading requests to dispatch now, following
// Triton: all of them when its oldest request has waited MaxQueueDelay or
// when closing; otherwise the longest prefix whose rows are a preferred size
// (a full batch too: "the largest possible preferred size"); otherwise all
// of them when the batch is full or sealed or MaxQueueDelay is 0; otherwise
// none, and the batch keeps waiting.
func (s *Scheduler) take(b *batch, now time.Time, draining bool) int {
	if s.cfg.Policy != nil {
		return s.takeByPolicy(b, now, draining)
	}
	d := s.cfg.MaxQueueDelay
	if draining || d > 0 && now.Sub(b.reqs[0].enqueued) >= d {
		return len(b.reqs)
	}
	best := 0
	if s.preferred != nil {
		rows := 0
		for i, r := range b.reqs {
			rows += r.rows
			if s.preferred[rows] {
				best = i + 1
			}
		}
	}
	if best == 0 && (b.sealed || b.rows >= s.cfg.MaxBatchSize || d == 0) {
		return len(b.reqs)
	}
	return best
}

// takeByPolicy asks the Policy about b unless b must run (full, sealed,
// closing, or its oldest request reached the wait bound) or the policy asked
// to wait and that wait is not over.
func (s *Scheduler) takeByPolicy(b *batch, now time.Time, draining bool) int {
	bound := s.cfg.policyBound()
	oldest := now.Sub(b.reqs[0].enqueued)
	if draining || b.sealed || b.rows >= s.cfg.MaxBatchSize || oldest >= bound {
		return len(b.reqs)
	}
	if now.Before(b.waitUntil) {
		return 0
	}
	q := QueueState{Queued: len(b.reqs), OldestWait: oldest, Rows: make([]int64, len(b.reqs)), MaxBatch: int64(s.cfg.MaxBatchSize)}
	for i, r := range b.reqs {
		q.Rows[i] = int64(r.rows)
	}
	dec, err := s.askPolicy(q, bound, b.reqs)
	switch {
	case err != nil:
		s.stats.policyErrors.Add(1)
		s.log.Warn("batch policy failed; running the batch", "err", err)
		return len(b.reqs)
	case dec.Run > 0:
		return min(dec.Run, len(b.reqs))
	}
	wait := bound - oldest // Wait 0: at the next arrival (or the bound)
	if dec.Wait > 0 {
		wait = min(max(dec.Wait, 50*time.Microsecond), wait)
	}
	b.waitUntil = now.Add(wait)
	return 0
}

// askPolicy calls the Policy, turning a panic into an error: the batch runs
// instead of the node crashing, as for a model that panics.
func (s *Scheduler) askPolicy(q QueueState, bound time.Duration, reqs []*request) (dec Decision, err error) {
	ctx, cancel := context.WithTimeout(s.runCtx, bound)
	defer cancel()
	ctx = s.batchContext(ctx, reqs)
	defer func() {
		if p := recover(); p != nil {
			dec, err = Decision{}, fmt.Errorf("batch policy panicked: %v", p)
		}
	}()
	return s.cfg.Policy(ctx, q)
}

// due is when the first pending batch must be looked at again: its oldest
// request will have waited MaxQueueDelay, or (under a Policy) the policy's
// wait is over.
func (s *Scheduler) due(pending []*batch) time.Time {
	var first time.Time
	for _, b := range pending {
		t := b.reqs[0].enqueued.Add(s.cfg.MaxQueueDelay)
		if s.cfg.Policy != nil {
			t = b.reqs[0].enqueued.Add(s.cfg.policyBound())
			if !b.waitUntil.IsZero() && b.waitUntil.Before(t) {
				t = b.waitUntil
			}
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first
}

// prune drops the requests of b whose callers have gone or whose context has
// ended: they must never run.
func (s *Scheduler) prune(b *batch) {
	kept := b.reqs[:0]
	for _, r := range b.reqs {
		if r.state.Load() != stateQueued || r.ctx.Err() != nil {
			s.dequeue(r, stateCancelled)
			b.rows -= r.rows
			continue
		}
		kept = append(kept, r)
	}
	clear(b.reqs[len(kept):])
	b.reqs = kept
}

// sweep drops the requests of every pending batch whose callers have gone,
// and the batches left empty.
func (s *Scheduler) sweep(pending []*batch) []*batch {
	kept := pending[:0]
	for _, b := range pending {
		s.prune(b)
		if len(b.reqs) == 0 {
			s.freeBatch(b)
			continue
		}
		kept = append(kept, b)
	}
	clear(pending[len(kept):])
	// A batch whose oldest requests were dropped goes behind older ones.
	slices.SortStableFunc(kept, func(a, b *batch) int { return a.reqs[0].enqueued.Compare(b.reqs[0].enqueued) })
	return kept
}

// abort fails everything still queued when Close gives up. reqCh is closed by
// then, so ranging over it ends.
func (s *Scheduler) abort(pending []*batch) {
	err := s.closedErr()
	for _, b := range pending {
		for _, r := range b.reqs {
			s.fail(r, err)
		}
	}
	for r := range s.reqCh {
		s.fail(r, err)
	}
}

// fail takes r out of the queue with err, unless its caller has gone.
func (s *Scheduler) fail(r *request, err error) {
	if s.dequeue(r, stateRunning) {
		deliver(r, nil, err)
	}
}

// deliver hands r its result. r must not be touched afterwards: its caller may
// reuse it at once.
func deliver(r *request, outs []*tensor.Tensor, err error) {
	r.outs, r.err = outs, err
	r.done <- struct{}{}
}

// claim marks the requests that may still run as running, drops the others,
// and returns the kept ones (reusing reqs). A request whose context ended is
// dropped even if its caller has not noticed yet.
func (s *Scheduler) claim(reqs []*request, now time.Time) []*request {
	kept := reqs[:0]
	for _, r := range reqs {
		if r.ctx.Err() != nil {
			s.dequeue(r, stateCancelled)
			continue
		}
		if !s.dequeue(r, stateRunning) {
			continue
		}
		s.stats.queueNs.Add(int64(now.Sub(r.enqueued)))
		kept = append(kept, r)
	}
	clear(reqs[len(kept):])
	return kept
}

// soloLoop is a worker without batching: it runs each request as given,
// once it holds an instance slot (an inline caller may have one).
func (s *Scheduler) soloLoop() {
	defer s.exit()
	for r := range s.reqCh {
		select {
		case <-s.slots:
		case <-s.runCtx.Done():
			s.fail(r, s.closedErr())
			continue
		}
		s.solo(r)
	}
}

// solo runs r holding an instance slot, and puts the slot back.
func (s *Scheduler) solo(r *request) {
	if !s.dequeue(r, stateRunning) {
		s.release() // abandoned: its caller uncounted it
		return
	}
	if r.ctx.Err() != nil {
		r.state.Store(stateCancelled) // its caller returns ctx.Err() on its own
		s.release()
		return
	}
	if s.runCtx.Err() != nil {
		s.release()
		deliver(r, nil, s.closedErr())
		return
	}
	start := time.Now()
	s.stats.queueNs.Add(int64(start.Sub(r.enqueued))) // only requests that run count
	outs, err := s.infer(r.ctx, r.inputs, r.outputs)
	s.release()
	s.stats.record(1, time.Since(start))
	if err != nil {
		err = fmt.Errorf("engine %s: %w", s.name, err)
	}
	deliver(r, outs, err)
}

// maxReusedBatchBuffer bounds the batch input buffer a worker keeps for
// the next batch. A larger one (a burst of big requests) is used once and
// left to the garbage collector: kept, it stayed allocated for as long as
// the deployment served, however small its later batches. Copying that
// much costs about as much as the page faults of a fresh buffer: reuse
// gains little there.
const maxReusedBatchBuffer = 16 << 20

// worker holds one batching worker's scratch space.
type worker struct {
	parts []*tensor.Tensor
	sizes []int64
	// bufs[i] is reused for input i of every batch when the model is an
	// InputReleaser; a buffer that the outputs share is given up.
	bufs [][]byte
}

// workLoop is a worker with batching: it runs the batches the batcher hands
// it.
func (s *Scheduler) workLoop() {
	defer s.exit()
	var w worker
	for b := range s.workCh {
		s.run(&w, b)
	}
}

// release gives the worker's instance slot back, once per batch, as soon as
// the model has returned: splitting outputs and waking callers need not hold
// up the next batch. At most Instances slots are out, so this never blocks.
func (s *Scheduler) release() { s.slots <- struct{}{} }

// run executes one batch, releases the instance and delivers every
// request's result.
func (s *Scheduler) run(w *worker, b *batch) {
	defer s.freeBatch(b)
	start := time.Now()
	reqs := s.claim(b.reqs, start)
	switch {
	case len(reqs) == 0:
		s.release()
	case s.runCtx.Err() != nil:
		s.release()
		failAll(reqs, s.closedErr())
	case len(reqs) == 1:
		// Alone: the request runs as given, under its caller's context.
		r := reqs[0]
		outs, err := s.infer(r.ctx, r.inputs, r.outputs)
		s.release()
		s.stats.record(r.rows, time.Since(start))
		if err != nil {
			err = fmt.Errorf("engine %s: %w", s.name, err)
		}
		deliver(r, outs, err)
	default:
		s.runBatch(w, reqs, start)
	}
}

// runAlone runs each of reqs as given, one after the other, on the
// instance the caller holds, under its own caller's context: a batch that
// failed on one request's values (Config.Isolate) then fails that request
// alone.
func (s *Scheduler) runAlone(reqs []*request) {
	for _, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			deliver(r, nil, fmt.Errorf("engine %s: %w", s.name, err))
			continue
		}
		if s.runCtx.Err() != nil {
			deliver(r, nil, s.closedErr())
			continue
		}
		start := time.Now()
		outs, err := s.infer(r.ctx, r.inputs, r.outputs)
		s.stats.record(r.rows, time.Since(start))
		if err != nil {
			err = fmt.Errorf("engine %s: %w", s.name, err)
		}
		deliver(r, outs, err)
	}
}

// failAll delivers err to every request.
func failAll(reqs []*request, err error) {
	for _, r := range reqs {
		deliver(r, nil, err)
	}
}

// runBatch joins reqs' inputs along dimension 0, runs them once, releases
// the instance and splits every output back into each request's rows. Any
// failure goes to all.
func (s *Scheduler) runBatch(w *worker, reqs []*request, start time.Time) {
	first := reqs[0]
	rows := 0
	w.sizes = w.sizes[:0]
	for _, r := range reqs {
		rows += r.rows
		w.sizes = append(w.sizes, int64(r.rows))
	}
	inputs := make([]*tensor.Tensor, len(first.inputs))
	if len(w.bufs) < len(inputs) {
		w.bufs = append(w.bufs, make([][]byte, len(inputs)-len(w.bufs))...)
	}
	for i, in := range first.inputs {
		w.parts = w.parts[:0]
		for _, r := range reqs {
			w.parts = append(w.parts, r.inputs[i])
		}
		var buf []byte
		if s.reuse {
			buf = w.bufs[i]
		}
		t, err := tensor.ConcatInto(in.Name, w.parts, buf)
		if s.reuse && err == nil && cap(t.Data) > cap(buf) && cap(t.Data) <= maxReusedBatchBuffer {
			w.bufs[i] = t.Data[:0] // a larger batch than before: keep its buffer
		}
		if err != nil {
			clear(w.parts)
			s.release()
			failAll(reqs, fmt.Errorf("engine %s: batch of %d requests: %w", s.name, len(reqs), err))
			return
		}
		inputs[i] = t
	}
	clear(w.parts)

	// The batch belongs to no single caller: it runs under the scheduler's
	// context, which only a Close that gives up cancels.
	outs, err := s.infer(s.batchContext(s.runCtx, reqs), inputs, first.outputs)
	if err != nil && s.runCtx.Err() == nil && s.cfg.Isolate != nil && s.cfg.Isolate(err) {
		s.stats.record(rows, time.Since(start))
		s.log.Debug("batch failed on a request's values; running its requests alone", "requests", len(reqs), "rows", rows, "err", err)
		s.runAlone(reqs)
		s.release()
		return
	}
	s.release()
	s.stats.record(rows, time.Since(start))
	if err != nil && s.runCtx.Err() != nil {
		// Close gave up on the batch: its callers cancelled nothing.
		failAll(reqs, s.closedErr())
		return
	}
	if err != nil {
		s.log.Debug("batch failed", "requests", len(reqs), "rows", rows, "err", err)
		failAll(reqs, fmt.Errorf("engine %s: batch of %d requests, %d rows: %w", s.name, len(reqs), rows, err))
		return
	}
	// The callers keep their outputs' memory: an output that shares an
	// input buffer (a model may pass an input through) takes it away.
	for i, buf := range w.bufs {
		for _, o := range outs {
			if o != nil && sharesMemory(buf, o) {
				w.bufs[i] = nil
			}
		}
	}
	n := len(outs)
	per := make([]*tensor.Tensor, len(reqs)*n)
	for j, o := range outs {
		if o == nil {
			failAll(reqs, fmt.Errorf("engine %s: model returned nil output %d", s.name, j))
			return
		}
		pieces, err := tensor.Split(o, w.sizes)
		if err != nil {
			s.log.Debug("batch output does not split", "output", o.Name, "shape", o.Shape, "rows", rows, "err", err)
			failAll(reqs, fmt.Errorf("engine %s: output %q of a %d-row batch: %w", s.name, o.Name, rows, err))
			return
		}
		for i, p := range pieces {
			per[i*n+j] = p
		}
	}
	for i, r := range reqs {
		deliver(r, per[i*n:(i+1)*n:(i+1)*n], nil)
	}
}

// batchContext is ctx (the scheduler's) carrying the values that
// Config.BatchValues gives reqs; ctx itself without it.
func (s *Scheduler) batchContext(ctx context.Context, reqs []*request) context.Context {
	if s.cfg.BatchValues == nil {
		return ctx
	}
	ctxs := make([]context.Context, len(reqs))
	for i, r := range reqs {
		ctxs[i] = r.ctx
	}
	return valuesContext{Context: ctx, values: s.cfg.BatchValues(ctxs)}
}

// valuesContext is its Context's cancellation and deadline with the values
// of values besides its own.
type valuesContext struct {
	context.Context
	values context.Context
}

// Value looks in the scheduler's context first: the context package finds
// its cancellation there, and it holds no values of the callers'.
func (c valuesContext) Value(key any) any {
	if v := c.Context.Value(key); v != nil {
		return v
	}
	if c.values == nil {
		return nil
	}
	return c.values.Value(key)
}

// infer calls the model, turning a panic into an error for the callers
// instead of a crash of the node.
func (s *Scheduler) infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) (outs []*tensor.Tensor, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("model panicked", "panic", p)
			outs, err = nil, fmt.Errorf("%w: %v", ErrModelPanic, p)
		}
	}()
	return s.model.Infer(ctx, inputs, outputs)
}

// sharesMemory says whether any of t's bytes (its Data or a BYTES element)
// lie in buf's memory, up to its capacity.
func sharesMemory(buf []byte, t *tensor.Tensor) bool {
	if overlaps(buf, t.Data) {
		return true
	}
	for _, e := range t.Strings {
		if overlaps(buf, e) {
			return true
		}
	}
	return false
}

// overlaps says whether the memory of a (up to its capacity) and b share a
// byte.
func overlaps(a, b []byte) bool {
	if cap(a) == 0 || len(b) == 0 {
		return false
	}
	a0 := uintptr(unsafe.Pointer(unsafe.SliceData(a)))
	b0 := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(cap(a))
}
