package guest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Entry is a guest entry point (abi.Entry).
type Entry = abi.Entry

// The entry points a deployment may use.
const (
	EntryPreprocess  = abi.Preprocess
	EntryPostprocess = abi.Postprocess
	EntryBatchPolicy = abi.BatchPolicy
	EntryFormatLoad  = abi.FormatLoad
	EntryFormatInfer = abi.FormatInfer
)

// PoolConfig configures the instances of one guest in one deployment.
type PoolConfig struct {
	// Name identifies the pool in logs and errors ("deployment/guest").
	Name string
	// Instances is the most instances (and so concurrent calls). Default: 1.
	Instances int
	// Eager starts every instance in NewPool; otherwise one is started to
	// check the guest and the rest when calls need them.
	Eager bool
	// Require lists the entry points the deployment calls; NewPool fails
	// with ErrABI when the guest does not provide one.
	Require []Entry
	// CallTimeout overrides Config.CallTimeout.
	CallTimeout time.Duration
	// PreciseClock gives the guest the host's clocks at full resolution;
	// otherwise its wall clock and monotonic clock tick in whole
	// milliseconds, too coarse to time cache hits or host code.
	PreciseClock bool
	// Config is what the guest reads with config_get.
	Config map[string]string
	// Infer runs models for the guest's infer calls (nil: none allowed).
	Infer cyxwiz.InferFunc
	// Log receives the guest's log calls and output. Default: the
	// Runtime's logger.
	Log *slog.Logger
}

// Pool runs calls on the instances of one guest. Calls may be concurrent;
// each takes one instance for its duration. An instance whose call fails
// (trap, deadline, memory, bad output) is closed and replaced on demand;
// one whose guest reported an error (ErrGuest) ran to completion and is
// kept. Failures never reach other instances or pools.
type Pool struct {
	rt      *Runtime
	m       *Module
	cfg     PoolConfig
	log     *slog.Logger
	timeout time.Duration
	sem     chan struct{} // one token per instance in use or idle
	// life ends when Close stops waiting: instances still being made for
	// calls (start) stop then.
	life context.Context
	end  context.CancelFunc
	// making counts the instances being made by start; Close waits for
	// them after ending life. Added to under mu while the pool is open.
	making sync.WaitGroup

	mu       sync.Mutex
	idle     []*instance
	closed   bool
	model    []byte // FormatLoad's file, loaded into every new instance
	gen      int    // bumped by FormatLoad: older instances are retired
	provided int32  // entry point set the guest declares
}

// NewPool checks the module (exports, ABI version, required entry points)
// by starting an instance, and returns a pool of cfg.Instances (at most
// MaxInstances). Errors
// wrap ErrABI when the guest cannot serve the deployment.
func (rt *Runtime) NewPool(ctx context.Context, m *Module, cfg PoolConfig) (*Pool, error) {
	if err := m.ABI(); err != nil {
		return nil, fmt.Errorf("guest %s: %w", cfg.Name, err)
	}
	if cfg.Instances > MaxInstances {
		return nil, fmt.Errorf("guest %s: %d instances, at most %d", cfg.Name, cfg.Instances, MaxInstances)
	}
	if cfg.Instances <= 0 {
		cfg.Instances = 1
	}
	p := &Pool{rt: rt, m: m, cfg: cfg, log: cfg.Log, timeout: cfg.CallTimeout, sem: make(chan struct{}, cfg.Instances)}
	p.life, p.end = context.WithCancel(context.Background())
	if p.log == nil {
		p.log = rt.log.With("guest", cfg.Name)
	}
	if p.timeout <= 0 {
		p.timeout = rt.cfg.CallTimeout
	}
	m.acquire()
	n := 1
	if cfg.Eager {
		n = cfg.Instances
	}
	for range n {
		inst, err := p.newInstance(ctx, nil, 0)
		if err != nil {
			_ = p.Close(ctx)
			return nil, err
		}
		p.idle = append(p.idle, inst)
	}
	p.provided = p.idle[0].provided
	return p, nil
}

// Entries lists the entry points the guest provides.
func (p *Pool) Entries() []Entry {
	var out []Entry
	for e := range abi.NumEntries {
		if p.provided&e.Bit() != 0 {
			out = append(out, e)
		}
	}
	return out
}

// Close waits (until ctx ends) for calls in progress and for instances
// being made for calls that stopped waiting, then closes every instance
// (those still being made stop, and Close returns once they have). Calls
// after Close fail with loaders.ErrClosed.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	// Take every token: no call is in flight once we hold them all.
	taken := 0
wait:
	for ; taken < cap(p.sem); taken++ {
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			break wait
		}
	}
	p.end() // instances still being made (Close gave up waiting) stop
	p.making.Wait()
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	var errs []error
	for _, inst := range idle {
		errs = append(errs, inst.close(ctx))
	}
	for range taken {
		<-p.sem
	}
	errs = append(errs, p.m.Close(ctx))
	return errors.Join(errs...)
}

// instance is one running guest with its host-side session.
type instance struct {
	mod      api.Module
	mem      api.Memory
	alloc    api.Function
	entries  [abi.NumEntries]api.Function
	provided int32
	sess     *cyxwiz.Session
	cc       *callCtx // the context of run's calls
	stdout   *capture
	stderr   *capture
	gen      int
	stack    []uint64
	list     []abi.Tensor // the input list, reused
	buf      []byte       // the encoded input
	inPtr    uint32       // the guest's input buffer (cyxwiz_alloc)
	inCap    uint32
}

func (i *instance) close(ctx context.Context) error {
	i.cc.close()
	i.sess.Close()
	return i.mod.Close(ctx)
}

func (p *Pool) errorf(op string, err error) error {
	return fmt.Errorf("guest %s: %s: %w", p.cfg.Name, op, err)
}

// newInstance instantiates the module, runs _initialize, checks the ABI
// version and the required entry points, and loads model when not nil.
func (p *Pool) newInstance(ctx context.Context, model []byte, gen int) (_ *instance, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.rt.cfg.InitTimeout)
	defer cancel()
	inst := &instance{
		stdout: &capture{max: p.rt.cfg.OutputBytes},
		stderr: &capture{max: p.rt.cfg.OutputBytes},
		gen:    gen,
		stack:  make([]uint64, 2),
		sess: cyxwiz.NewSession(cyxwiz.Env{
			Log: p.log, Config: p.cfg.Config, Infer: p.cfg.Infer, Limits: p.rt.cfg.Limits,
		}),
	}
	inst.cc = newCallCtx(inst.sess)
	mc := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions().
		WithStdout(inst.stdout).
		WithStderr(inst.stderr).
		WithRandSource(&guestRand{cc: inst.cc})
	if p.cfg.PreciseClock {
		mc = mc.WithSysWalltime().WithSysNanotime()
	} else {
		mc = mc.WithWalltime(coarseWalltime, coarseResolution).WithNanotime(coarseNanotime, coarseResolution)
	}
	// Host functions work in entry points only (ABI.md), and the module's
	// start function, which instantiation runs, is none: it gets no
	// session, not even one ctx carries (another guest's, whose infer
	// call is making this instance).
	bare := cyxwiz.WithSession(ctx, nil)
	mod, err := p.rt.r.InstantiateModule(bare, p.m.compiled, mc)
	if err != nil {
		p.flush(inst, "instantiate")
		if p.rt.closed.Load() { // not the guest's fault: wazero's "runtime closed"
			return nil, p.errorf("instantiate", fmt.Errorf("the guest runtime is closed: %w", loaders.ErrClosed))
		}
		return nil, p.errorf("instantiate", fmt.Errorf("%w: %v", ErrABI, err))
	}
	inst.mod, inst.mem = mod, mod.Memory()
	defer func() {
		if err != nil {
			_ = inst.close(context.Background())
		}
	}()
	// _initialize (the guest's Go init), cyxwiz_abi_version and
	// cyxwiz_entries run without the session too, so their host calls get
	// ENOCALL and make nothing that would outlive its accounting.
	if f := mod.ExportedFunction(abi.ExportInit); f != nil {
		_, err := f.Call(bare)
		stderr := p.flush(inst, abi.ExportInit)
		if err != nil {
			return nil, p.errorf(abi.ExportInit, classify(ctx, err, stderr, inst.sess.Exceeded()))
		}
	}
	v, err := mod.ExportedFunction(abi.ExportVersion).Call(bare)
	if err != nil {
		return nil, p.errorf(abi.ExportVersion, classify(ctx, err, p.flush(inst, abi.ExportVersion), false))
	}
	if got := api.DecodeI32(v[0]); got != abi.Version {
		return nil, p.errorf(abi.ExportVersion, fmt.Errorf("%w: guest ABI version %d, this node runs version %d", ErrABI, got, abi.Version))
	}
	inst.alloc = mod.ExportedFunction(abi.ExportAlloc)
	for e := range abi.NumEntries {
		if f := mod.ExportedFunction(e.String()); f != nil {
			inst.entries[e] = f
			inst.provided |= e.Bit()
		}
	}
	if f := mod.ExportedFunction(abi.ExportEntries); f != nil {
		set, err := f.Call(bare)
		if err != nil {
			return nil, p.errorf(abi.ExportEntries, classify(ctx, err, p.flush(inst, abi.ExportEntries), false))
		}
		inst.provided &= api.DecodeI32(set[0])
	}
	var missing []string
	for _, e := range p.cfg.Require {
		if inst.provided&e.Bit() == 0 {
			missing = append(missing, e.String())
		}
	}
	if len(missing) > 0 {
		return nil, p.errorf("check", fmt.Errorf("%w: the guest does not provide %v (it provides %v)", ErrABI, missing, entryNames(inst.provided)))
	}
	if model != nil {
		m := &tensor.Tensor{Name: "model", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{model}}
		if _, err := p.call(cyxwiz.WithSession(ctx, inst.sess), inst, abi.FormatLoad, []*tensor.Tensor{m}); err != nil {
			return nil, err
		}
	}
	return inst, nil
}

func entryNames(set int32) []string {
	var out []string
	for e := range abi.NumEntries {
		if set&e.Bit() != 0 {
			out = append(out, e.String())
		}
	}
	return out
}

// flush logs what the instance wrote and returns its stderr.
func (p *Pool) flush(inst *instance, op string) string {
	if s, dropped := inst.stdout.take(); s != "" || dropped > 0 {
		p.log.Info("guest stdout", "call", op, "text", s, "dropped_bytes", dropped)
	}
	s, dropped := inst.stderr.take()
	if s != "" || dropped > 0 {
		p.log.Warn("guest stderr", "call", op, "text", s, "dropped_bytes", dropped)
	}
	return s
}

func waitErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w (%w): waiting for an instance", ErrDeadline, context.DeadlineExceeded)
	}
	return fmt.Errorf("waiting for an instance: %w", ctx.Err())
}

// acquire takes an idle instance, or makes one (see start). own makes it
// under ctx itself, for FormatLoad: the deployment's own load, which
// stopping the deployment cancels.
func (p *Pool) acquire(ctx context.Context, own bool) (*instance, error) {
	// A caller already gone takes nothing: wazero would close the
	// instance at the call's start (and with it a loaded model).
	if ctx.Err() != nil {
		return nil, p.errorf("acquire", waitErr(ctx))
	}
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, p.errorf("acquire", waitErr(ctx))
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return nil, p.errorf("acquire", loaders.ErrClosed)
	}
	for len(p.idle) > 0 {
		inst := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if inst.gen == p.gen {
			p.mu.Unlock()
			return inst, nil
		}
		_ = inst.close(ctx)
	}
	model, gen := p.model, p.gen
	p.mu.Unlock()
	if !own {
		return p.start(ctx, model, gen)
	}
	inst, err := p.newInstance(ctx, model, gen)
	if err != nil {
		<-p.sem
		return nil, err
	}
	return inst, nil
}

// start makes a new instance for a caller that holds a token. The instance
// is the pool's, not the caller's: it is made with the caller's values but
// not its deadline (InitTimeout and the pool's life bound it), and a
// caller that stops waiting leaves it, and the token, to the pool. Made
// under the caller's deadline, a custom format whose format_load took
// longer than its clients waited never got an instance again once it had
// lost one.
func (p *Pool) start(ctx context.Context, model []byte, gen int) (*instance, error) {
	type made struct {
		inst *instance
		err  error
	}
	done := make(chan made)     // unbuffered: taken only by a caller still waiting
	gone := make(chan struct{}) // closed when the caller stops waiting
	p.mu.Lock()
	if p.closed { // Close may be waiting for the making already
		p.mu.Unlock()
		<-p.sem
		return nil, p.errorf("acquire", loaders.ErrClosed)
	}
	p.making.Add(1)
	p.mu.Unlock()
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(p.life, cancel)
	go func() {
		defer p.making.Done()
		defer cancel()
		defer stop()
		inst, err := p.newInstance(mctx, model, gen)
		select {
		case done <- made{inst, err}:
		case <-gone:
			if err != nil {
				p.log.Warn("guest instance failed to start", "err", err)
				<-p.sem
				return
			}
			p.release(inst, true)
		}
	}()
	select {
	case m := <-done:
		if m.err != nil {
			<-p.sem
			if p.life.Err() != nil {
				// Close stopped the making: the pool is gone, the caller
				// canceled nothing (its error said "context canceled").
				return nil, p.errorf("acquire", fmt.Errorf("%w: the instance being made was stopped (%v)", loaders.ErrClosed, m.err))
			}
			return nil, m.err
		}
		return m.inst, nil
	case <-ctx.Done():
		close(gone)
		return nil, p.errorf("acquire", waitErr(ctx))
	}
}

// release returns inst to the pool, or closes it when it failed, belongs
// to an older FormatLoad, or the pool is closed.
func (p *Pool) release(inst *instance, ok bool) {
	p.mu.Lock()
	keep := ok && !p.closed && inst.gen == p.gen
	if keep {
		p.idle = append(p.idle, inst)
	}
	p.mu.Unlock()
	if !keep {
		_ = inst.close(context.Background())
	}
	<-p.sem
}

// run calls entry point e on an instance of the pool.
func (p *Pool) run(ctx context.Context, e Entry, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
	if p.provided&e.Bit() == 0 {
		return nil, p.errorf(e.String(), fmt.Errorf("%w: the guest does not provide %s", ErrABI, e))
	}
	inst, err := p.acquire(ctx, false)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil { // gone while it waited: the instance stays good
		p.release(inst, true)
		return nil, p.errorf(e.String(), waitErr(ctx))
	}
	inst.cc.begin(ctx, p.timeout)
	out, err := p.call(inst.cc, inst, e, in)
	inst.cc.end()
	// The instance serves on after a clean call, a guest's own error, or
	// input refused before the guest ran; not when the call's context
	// fired, even as the guest returned: wazero may be closing the module.
	ok := err == nil || errors.Is(err, ErrGuest) || errors.Is(err, loaders.ErrInvalidInput)
	p.release(inst, ok && inst.cc.Err() == nil)
	return out, err
}

// inlineMax is the largest input passed inline in the call buffer; larger
// ones are passed as host tensor handles.
const inlineMax = 4096

// maxGuestError is the most of a guest's error message that is kept.
const maxGuestError = 4096

// cutRune drops the end of b that a cut left of a character: the first
// bytes of a multi-byte UTF-8 sequence whose rest was cut off.
func cutRune(b []byte) []byte {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return b[:i]
			}
			break
		}
	}
	return b
}

// call runs one entry point on inst under ctx, which carries inst's
// session: encode in (small tensors inline, the rest as handles), copy it
// into guest memory, call, decode and resolve the output, end the
// session's call.
func (p *Pool) call(ctx context.Context, inst *instance, e Entry, in []*tensor.Tensor) (_ []*tensor.Tensor, err error) {
	defer inst.sess.EndCall()
	op := e.String()
	list := slices.Grow(inst.list[:0], len(in))[:len(in)]
	defer func() { clear(list); inst.list = list[:0] }() // drop references to the inputs
	for i, t := range in {
		if err := t.Validate(); err != nil {
			return nil, p.errorf(op, fmt.Errorf("%w: %w", loaders.ErrInvalidInput, err))
		}
		// What the tensor list's framing can carry.
		if len(t.Name) > abi.MaxNameLen || len(t.Shape) > abi.MaxRank {
			return nil, p.errorf(op, fmt.Errorf("%w: tensor %.64q: a name of %d bytes or a rank of %d (at most %d and %d)",
				loaders.ErrInvalidInput, t.Name, len(t.Name), len(t.Shape), abi.MaxNameLen, abi.MaxRank))
		}
		if wireSize(t) <= inlineMax {
			list[i] = abi.Tensor{Name: t.Name, DType: uint8(t.DType), Shape: t.Shape, Data: t.Data, Strings: t.Strings}
			continue
		}
		h := inst.sess.Put(t)
		if h == 0 {
			return nil, p.errorf(op, fmt.Errorf("%w: no free host tensor handle", ErrMemory))
		}
		list[i] = cyxwiz.Info(h, t)
	}
	inst.buf = abi.Encode(inst.buf[:0], list)
	if len(inst.buf) > 1<<31-1 {
		return nil, p.errorf(op, fmt.Errorf("%w: input of %d bytes", loaders.ErrInvalidInput, len(inst.buf)))
	}
	fail := func(err error) error {
		p.log.Warn("guest call failed", "call", op, "err", err)
		return p.errorf(op, classify(ctx, err, p.flush(inst, op), inst.sess.Exceeded()))
	}
	// The buffer cyxwiz_alloc returned is the host's until the next
	// cyxwiz_alloc (ABI v1): allocate only when it is too small, rounding
	// up so that growing inputs seldom reallocate.
	if uint32(len(inst.buf)) > inst.inCap || inst.inPtr == 0 {
		size := max(uint32(len(inst.buf)), inst.inCap*2, 4096)
		inst.stack[0] = uint64(size)
		// cyxwiz_alloc is no entry point: its host calls get ENOCALL.
		if err := inst.alloc.CallWithStack(cyxwiz.WithSession(ctx, nil), inst.stack); err != nil {
			return nil, fail(err)
		}
		inst.inPtr, inst.inCap = api.DecodeU32(inst.stack[0]), size
		if inst.inPtr == 0 {
			p.flush(inst, op)
			return nil, p.errorf(op, fmt.Errorf("%w: %s(%d) returned 0", ErrMemory, abi.ExportAlloc, size))
		}
	}
	ptr := inst.inPtr
	if !inst.mem.Write(ptr, inst.buf) {
		p.flush(inst, op)
		return nil, p.errorf(op, fmt.Errorf("%w: %s returned %#x, outside its memory", ErrBadOutput, abi.ExportAlloc, ptr))
	}
	inst.stack[0], inst.stack[1] = uint64(ptr), uint64(len(inst.buf))
	if err := inst.entries[e].CallWithStack(ctx, inst.stack); err != nil {
		return nil, fail(err)
	}
	res := int64(inst.stack[0])
	p.flush(inst, op)
	if res < 0 {
		mp, mn := abi.Unpack(-res)
		view, ok := inst.mem.Read(mp, min(mn, maxGuestError))
		if !ok {
			return nil, p.errorf(op, fmt.Errorf("%w: error message at %#x outside its memory", ErrBadOutput, mp))
		}
		if mn > maxGuestError {
			view = cutRune(view)
		}
		msg := strings.ToValidUTF8(string(view), "\uFFFD")
		if inst.sess.Exceeded() {
			return nil, p.errorf(op, fmt.Errorf("%w: host tensor limit: %s", ErrMemory, msg))
		}
		if ie := inst.sess.InferErr(); ie != nil {
			return nil, p.errorf(op, fmt.Errorf("%w: %s (after a model it called failed: %w)", ErrGuest, msg, ie))
		}
		return nil, p.errorf(op, fmt.Errorf("%w: %s", ErrGuest, msg))
	}
	return p.output(op, inst, res)
}

// outputOverhead is what the host holds for each tensor of an output
// besides its data (its decoded list entry and its tensor, ~220 bytes): it
// counts against MaxOutputBytes with the list's bytes, or a list of BOOL
// scalars (19 bytes each) made the host allocate twelve times the limit.
const outputOverhead = 256

// output decodes and resolves the tensor list at the packed result res.
func (p *Pool) output(op string, inst *instance, res int64) ([]*tensor.Tensor, error) {
	ptr, n := abi.Unpack(res)
	if n > p.rt.cfg.MaxOutputBytes {
		return nil, p.errorf(op, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadOutput, n, p.rt.cfg.MaxOutputBytes))
	}
	view, ok := inst.mem.Read(ptr, n)
	if !ok {
		return nil, p.errorf(op, fmt.Errorf("%w: %d bytes at %#x, outside its memory", ErrBadOutput, n, ptr))
	}
	// Each tensor of the list counts outputOverhead besides its bytes,
	// before it is decoded: the count is at offset 8 of the header.
	total := int64(n)
	if len(view) >= 12 {
		count := int64(binary.LittleEndian.Uint32(view[8:]))
		if total += count * outputOverhead; total > int64(p.rt.cfg.MaxOutputBytes) {
			return nil, p.errorf(op, fmt.Errorf("%w: %d tensors in %d bytes, %d with the %d bytes the host holds for each; the limit is %d (guests.max_output_size)",
				ErrBadOutput, count, n, total, outputOverhead, p.rt.cfg.MaxOutputBytes))
		}
	}
	buf := bytes.Clone(view)
	list, err := abi.Decode(buf, abi.Size)
	if err != nil {
		return nil, p.errorf(op, fmt.Errorf("%w: %w", ErrBadOutput, err))
	}
	out := make([]*tensor.Tensor, len(list))
	// Host tensors named by handle count against the limit too: each
	// mention is a copy in the response (the same handle listed 20,000
	// times would otherwise be 20,000 copies).
	for i, e := range list {
		if e.Handle != 0 {
			t, ok := inst.sess.Get(e.Handle)
			if !ok {
				return nil, p.errorf(op, fmt.Errorf("%w: output %q names unknown handle %d", ErrBadOutput, e.Name, e.Handle))
			}
			if total += wireSize(t); total > int64(p.rt.cfg.MaxOutputBytes) {
				return nil, p.errorf(op, fmt.Errorf("%w: outputs of more than %d bytes, the limit is %d (guests.max_output_size)",
					ErrBadOutput, total, p.rt.cfg.MaxOutputBytes))
			}
			c := *t // tensors are immutable: share the elements, rename the copy
			c.Name = e.Name
			out[i] = &c
			continue
		}
		t := &tensor.Tensor{Name: e.Name, DType: tensor.DType(e.DType), Shape: e.Shape, Data: e.Data, Strings: e.Strings}
		if err := t.Validate(); err != nil {
			return nil, p.errorf(op, fmt.Errorf("%w: %w", ErrBadOutput, err))
		}
		out[i] = t
	}
	return out, nil
}

// Preprocess runs the guest's preprocess entry point: request tensors in,
// model inputs out. The inputs are not modified; outputs may share their
// elements with inputs.
func (p *Pool) Preprocess(ctx context.Context, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
	return p.run(ctx, EntryPreprocess, in)
}

// Postprocess runs the guest's postprocess entry point: model outputs in,
// response tensors out.
func (p *Pool) Postprocess(ctx context.Context, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
	return p.run(ctx, EntryPostprocess, in)
}

// FormatInfer runs a custom format's inference in the guest, on the model
// given to FormatLoad.
func (p *Pool) FormatInfer(ctx context.Context, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
	return p.run(ctx, EntryFormatInfer, in)
}

// FormatLoad gives the guest a custom format's model file. Every instance
// loads it (instances started before are retired); the first load happens
// now and its error is returned. model must not change afterwards.
func (p *Pool) FormatLoad(ctx context.Context, model []byte) error {
	if p.provided&EntryFormatLoad.Bit() == 0 {
		return p.errorf(EntryFormatLoad.String(), fmt.Errorf("%w: the guest does not provide %s", ErrABI, EntryFormatLoad))
	}
	if model == nil {
		model = []byte{}
	}
	p.mu.Lock()
	p.model = model
	p.gen++
	old := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, inst := range old {
		_ = inst.close(ctx)
	}
	inst, err := p.acquire(ctx, true) // a new instance: it loads the model
	if err != nil {
		return err
	}
	p.release(inst, true)
	return nil
}

// QueueState is what a batch policy sees of a deployment's queue.
type QueueState struct {
	// Queued is the number of requests waiting.
	Queued int
	// OldestWait is how long the oldest request has waited.
	OldestWait time.Duration
	// Rows is each queued request's batch size, oldest first.
	Rows []int64
	// MaxBatch is the most rows the model takes in one run.
	MaxBatch int64
}

// Decision is a batch policy's answer: run the Run oldest requests now,
// or, when Run is 0, ask again after Wait (0: at the next arrival).
type Decision struct {
	Run  int
	Wait time.Duration
}

func int64s(name string, shape []int64, v ...int64) *tensor.Tensor {
	return tensor.FromSlice(name, tensor.Int64, shape, v)
}

// BatchPolicy asks the guest's batch policy what to do with the queue.
func (p *Pool) BatchPolicy(ctx context.Context, q QueueState) (Decision, error) {
	out, err := p.run(ctx, EntryBatchPolicy, []*tensor.Tensor{
		int64s("queued", nil, int64(q.Queued)),
		int64s("oldest_wait_us", nil, q.OldestWait.Microseconds()),
		int64s("rows", []int64{int64(len(q.Rows))}, q.Rows...),
		int64s("max_batch", nil, q.MaxBatch),
	})
	if err != nil {
		return Decision{}, err
	}
	var d Decision
	var run, wait int // how many of each: exactly one
	for _, t := range out {
		if t.DType != tensor.Int64 || len(t.Data) != 8 {
			continue
		}
		v := tensor.View[int64](t)[0]
		switch t.Name {
		case "run":
			d.Run, run = int(v), run+1
		case "wait_us":
			d.Wait, wait = microseconds(v), wait+1
		}
	}
	if run != 1 || wait != 1 || d.Run < 0 || d.Run > q.Queued || d.Wait < 0 {
		return Decision{}, p.errorf(EntryBatchPolicy.String(), fmt.Errorf("%w: want INT64 scalars run in [0, %d] and wait_us >= 0, got %v", ErrBadOutput, q.Queued, names(out)))
	}
	return d, nil
}

// microseconds is v µs as a Duration: saturated at the longest one (a
// guest's "wait as long as you like"), and negative when v is. The plain
// product overflowed: -2^62 µs became a wait of 0, and 2^63-1 µs a
// negative one, refused as a bad output.
func microseconds(v int64) time.Duration {
	switch {
	case v < 0:
		return -1
	case v > math.MaxInt64/int64(time.Microsecond):
		return math.MaxInt64
	}
	return time.Duration(v) * time.Microsecond
}

func names(ts []*tensor.Tensor) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = fmt.Sprintf("%s %v %v", t.Name, t.DType, t.Shape)
	}
	return slices.Clip(out)
}

// wireSize is what t takes in a tensor list or a KServe response: its data,
// and for BYTES a 4-byte length per element too.
func wireSize(t *tensor.Tensor) int64 {
	if t.DType == tensor.Bytes {
		return int64(tensor.StringsSize(t.Strings))
	}
	return int64(len(t.Data))
}

// guestRand is a guest's random_get: the system's random source (wazero's
// default is a fixed sequence, the same on every node), read in chunks so
// that a huge request stops at the call's deadline.
type guestRand struct{ cc *callCtx }

func (g *guestRand) Read(p []byte) (int, error) {
	if err := g.cc.Err(); err != nil {
		return 0, err
	}
	return rand.Read(p[:min(len(p), 64<<10)])
}
