package cyxwiz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Errors an InferFunc returns for the infer host function to report the
// right errno to the guest.
var (
	// ErrNotAllowed: the guest named a model its manifest does not allow (EPERM).
	ErrNotAllowed = errors.New("model not allowed for this guest")
	// ErrLimit: a host tensor limit was reached (ENOMEM). Session.Exceeded
	// reports it to the caller after the call.
	ErrLimit = errors.New("guest host-tensor limit reached")
	// errInvalid marks a bad argument (EINVAL).
	errInvalid = errors.New("invalid argument")
)

// InferFunc runs a model for a guest: model "" is the deployment's own
// model, any other name a deployment the manifest allows (return an error
// wrapping ErrNotAllowed otherwise). It must respect ctx and must not
// modify its inputs.
type InferFunc func(ctx context.Context, model string, in []*tensor.Tensor) ([]*tensor.Tensor, error)

// Limits bound what one guest instance may hold on the host.
type Limits struct {
	// MaxHandles is the most host tensors an instance may hold at once.
	// Default: 4096.
	MaxHandles int
	// MaxBytes is the most bytes of host tensors an instance may create
	// (inputs the host passes in do not count). Default: 256 MiB.
	MaxBytes int64
	// MaxLogBytes truncates one log message. Default: 4096.
	MaxLogBytes int
	// MaxCallLogBytes bounds what one entry-point call may log, as its
	// stdout and stderr are: messages past it are dropped and counted in
	// one warning at the end of the call. Default: 64 KiB.
	MaxCallLogBytes int
}

func (l Limits) withDefaults() Limits {
	if l.MaxHandles <= 0 {
		l.MaxHandles = 4096
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = 256 << 20
	}
	if l.MaxLogBytes <= 0 {
		l.MaxLogBytes = 4096
	}
	if l.MaxCallLogBytes <= 0 {
		l.MaxCallLogBytes = 64 << 10
	}
	return l
}

// Env is what the host functions may reach for one guest: its logger,
// its deployment's config values, the models it may run, its limits.
type Env struct {
	// Log receives the guest's log calls. nil: slog.Default().
	Log *slog.Logger
	// Config holds the values config_get returns.
	Config map[string]string
	// Infer runs models for the infer host function; nil refuses every
	// model with EPERM.
	Infer InferFunc
	// Limits bounds the instance's host tensors.
	Limits Limits
}

// Session is the host side of one guest instance: its host tensor handles
// and the state of the call in progress. It is used by one call at a time
// (a pool hands an instance to one caller); pass it to the host functions
// with WithSession.
type Session struct {
	env    Env
	lim    Limits
	next   uint32
	tab    map[uint32]*slot
	used   int64 // bytes of guest-created tensors and working memory
	peak   int64 // the most used has been in this call
	hit    bool  // a limit was reached during this call
	errMsg string
	// inferErr is the last error a model called by infer gave in this call.
	inferErr error
	// pending holds the outputs of the last infer, when they did not fit
	// its out buffer, for a retry.
	pending *pendingInfer
	// ctx is the context of the host function running (nil between host
	// calls): long operations stop when the guest call's deadline passes.
	ctx context.Context
	// logged is what the call logged; dropped, the messages (and their
	// bytes) past Limits.MaxCallLogBytes.
	logged, dropped, droppedBytes int
	// work counts elements between two deadline checks (tick).
	work int
}

type slot struct {
	t      *tensor.Tensor
	bytes  int64 // charged against Limits.MaxBytes, name included
	name   int64 // of bytes, what the name is charged (a rename refunds it)
	pinned bool
}

// NewSession returns the session of one instance.
func NewSession(env Env) *Session {
	if env.Log == nil {
		env.Log = slog.Default()
	}
	return &Session{env: env, lim: env.Limits.withDefaults(), tab: make(map[uint32]*slot)}
}

type sessionKey struct{}

// WithSession returns a context that the host functions called under it
// (through api.Function.Call) use to find s. A nil s hides any session ctx
// carries: host functions called under it return ENOCALL, as the ABI
// wants outside entry points (_initialize, cyxwiz_alloc).
func WithSession(ctx context.Context, s *Session) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

// SessionFrom returns the session WithSession put in ctx, or nil.
func SessionFrom(ctx context.Context) *Session {
	s, _ := ctx.Value(sessionKey{}).(*Session)
	return s
}

// Put registers a host tensor the guest may read (a call's input) and
// returns its handle, or 0 when the handle table is full. It is not
// charged against MaxBytes and never modified.
func (s *Session) Put(t *tensor.Tensor) uint32 {
	h, err := s.store(t, 0)
	if err != nil {
		return 0
	}
	return h
}

// Get returns the tensor behind handle h.
func (s *Session) Get(h uint32) (*tensor.Tensor, bool) {
	sl, ok := s.tab[h]
	if !ok {
		return nil, false
	}
	return sl.t, true
}

// pendingInfer is an infer whose outputs did not fit the guest's out
// buffer: they stay on the host, charged (bytes), until the next infer
// call, which takes them when it names the same model and inputs.
type pendingInfer struct {
	model string
	in    []*tensor.Tensor // the inputs, by identity: tensors are immutable and a rename makes a new one
	out   []*tensor.Tensor
	bytes int64
}

// takePending returns the outputs kept for a retry and their charge,
// which pass to the caller, when an infer of model on in is that retry;
// nil otherwise.
func (s *Session) takePending(model string, in []*tensor.Tensor) ([]*tensor.Tensor, int64) {
	p := s.pending
	if p == nil || p.model != model || !slices.Equal(p.in, in) {
		return nil, 0
	}
	s.pending = nil
	return p.out, p.bytes
}

// dropPending refunds the outputs kept for an infer retry.
func (s *Session) dropPending() {
	if s.pending != nil {
		s.used -= s.pending.bytes
		s.pending = nil
	}
}

// EndCall frees every tensor not pinned and resets the call state.
func (s *Session) EndCall() {
	if s.dropped > 0 {
		s.env.Log.Warn("guest log messages dropped", "messages", s.dropped, "bytes", s.droppedBytes, "limit_bytes", s.lim.MaxCallLogBytes)
	}
	s.logged, s.dropped, s.droppedBytes = 0, 0, 0
	s.pending = nil
	s.used = 0
	for h, sl := range s.tab {
		if !sl.pinned {
			delete(s.tab, h)
			continue
		}
		s.used += sl.bytes
	}
	s.peak = s.used
	s.hit = false
	s.errMsg = ""
	s.inferErr = nil
}

// Close frees every tensor, pinned ones included.
func (s *Session) Close() {
	s.pending = nil
	clear(s.tab)
	s.used = 0
}

// Exceeded reports whether a host limit was reached during the call.
func (s *Session) Exceeded() bool { return s.hit }

// InferErr is the last error that a model called through infer returned
// in this call, or nil: a guest that then fails passes it on, and its
// caller's answer should say what went wrong there (queue full, not found).
func (s *Session) InferErr() error { return s.inferErr }

// LastError is the message of the last host function that failed in this call.
func (s *Session) LastError() string { return s.errMsg }

// Handles is the number of live host tensors.
func (s *Session) Handles() int { return len(s.tab) }

func (s *Session) store(t *tensor.Tensor, bytes int64) (uint32, error) {
	if len(s.tab) >= s.lim.MaxHandles {
		s.hit = true
		return 0, fmt.Errorf("%d host tensors: %w", len(s.tab), ErrLimit)
	}
	for {
		// Handles reach the guest as positive i32s (negative is an errno):
		// after 2^31-1 they start again at 1, skipping live ones.
		s.next++
		if s.next == 0 || s.next > math.MaxInt32 {
			s.next = 1
		}
		if _, taken := s.tab[s.next]; !taken {
			break
		}
	}
	s.tab[s.next] = &slot{t: t, bytes: bytes}
	return s.next, nil
}

// stringHeader is what the host holds per BYTES element besides its bytes
// (a slice header on 64-bit platforms).
const stringHeader = 24

// size is what tensor t holds on the host apart from its name: its data
// and, for BYTES, a slice header per element. Every tensor a host function
// creates is charged this before it is made, and its name when it is kept.
func size(t *tensor.Tensor) int64 {
	return t.ByteSize() + stringHeader*int64(len(t.Strings))
}

// keep stores t, whose size is already charged, charging its name too, and
// returns its handle. When it cannot, the size charge is given back (t is
// dropped) and the errno returned.
func (s *Session) keep(t *tensor.Tensor) int32 {
	sz, name := size(t), int64(len(t.Name))
	if err := s.charge(name); err != nil {
		s.used -= sz
		return s.errno(err)
	}
	h, err := s.store(t, sz+name)
	if err != nil {
		s.used -= sz + name
		return s.errno(err)
	}
	s.tab[h].name = name
	return int32(h)
}

// drop frees handle h and refunds its charge.
func (s *Session) drop(h uint32) {
	if sl, ok := s.tab[h]; ok {
		s.used -= sl.bytes
		delete(s.tab, h)
	}
}

// charge reserves n bytes of host tensor memory.
func (s *Session) charge(n int64) error {
	if n < 0 || n > s.lim.MaxBytes-s.used {
		s.hit = true
		return fmt.Errorf("need %d bytes, %d of %d in use: %w", n, s.used, s.lim.MaxBytes, ErrLimit)
	}
	s.used += n
	s.peak = max(s.peak, s.used)
	return nil
}

// scratch charges n bytes of an operation's working memory and returns
// their refund, for when the operation is over.
func (s *Session) scratch(n int64) (refund func(), err error) {
	if err := s.charge(n); err != nil {
		return nil, err
	}
	return func() { s.used -= n }, nil
}

// stopped returns an error once the guest call's deadline has passed or its
// caller went away: loops that may run long check it every row.
func (s *Session) stopped() error {
	if s.ctx == nil {
		return nil
	}
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("host operation stopped: %w", err)
	}
	return nil
}

// tick counts n elements of an operation's work and, every 2^16 of them,
// checks the deadline (stopped): element loops call it as they go, so that
// an operation stops at the deadline whatever its shape (one long row or
// many short ones) while the checks cost nothing.
func (s *Session) tick(n int) error {
	s.work += n
	if s.work < 1<<16 {
		return nil
	}
	s.work = 0
	return s.stopped()
}

// checkShape refuses a shape whose rows and columns could outnumber
// MaxBytes elements (tensor.Span): for a tensor with elements, that is
// already its size; for an empty one, it keeps loops over its dimensions
// bounded.
func (s *Session) checkShape(shape []int64) error {
	if sp := tensor.Span(shape); sp > s.lim.MaxBytes && sp > tensor.NumElements(shape) {
		s.hit = true
		return fmt.Errorf("shape %v spans %d rows and columns, more than %d: %w", shape, sp, s.lim.MaxBytes, ErrLimit)
	}
	return nil
}

// alloc returns a zeroed tensor charged against the byte limit.
func (s *Session) alloc(name string, dt tensor.DType, shape ...int64) (*tensor.Tensor, error) {
	n := tensor.NumElements(shape)
	if n < 0 || (dt.Size() > 0 && n > s.lim.MaxBytes/int64(dt.Size())) {
		s.hit = true
		return nil, fmt.Errorf("shape %v of %v: %w", shape, dt, ErrLimit)
	}
	if err := s.checkShape(shape); err != nil {
		return nil, err
	}
	if err := s.charge(n * int64(dt.Size())); err != nil {
		return nil, err
	}
	return tensor.New(name, dt, shape...), nil
}
