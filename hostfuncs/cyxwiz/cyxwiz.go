// Package cyxwiz is the "cyxwiz" host module of guest ABI v1 (see
// guests/ABI.md): logging, deployment config, tensor operations on
// host-side tensor handles, image decoding and model inference, for guest
// modules run by wazero.
//
// Like wazero's imports/wasi_snapshot_preview1, the module is instantiated
// once per wazero.Runtime; the state of each guest instance travels in the
// context of the call (WithSession), so every instance of every guest shares
// the same host functions:
//
//	cyxwiz.MustInstantiate(ctx, r)
//	s := cyxwiz.NewSession(cyxwiz.Env{Log: log, Config: cfg, Infer: infer})
//	h := s.Put(input)
//	res, err := fn.Call(cyxwiz.WithSession(ctx, s), ptr, n)
//	s.EndCall()
//
// Tensors stay on the host: a guest holds i32 handles and asks the host to
// compute (affine, normalize, softmax, topk, resize, matmul, add, relu,
// transpose, cast, reshape, concat, image_decode, infer); only what the
// guest reads with tensor_read is copied into its memory. Every pointer and
// length a guest passes is checked: one outside its memory makes that call
// return EFAULT, never a host panic.
package cyxwiz

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// ModuleName is the import module name of the host functions.
const ModuleName = abi.ModuleName

const (
	i32 = api.ValueTypeI32
	f32 = api.ValueTypeF32
)

// MustInstantiate calls Instantiate or panics on error. For tests and
// examples.
func MustInstantiate(ctx context.Context, r wazero.Runtime) {
	if _, err := Instantiate(ctx, r); err != nil {
		panic(err)
	}
}

// Instantiate instantiates the "cyxwiz" host module into r.
func Instantiate(ctx context.Context, r wazero.Runtime) (api.Closer, error) {
	return NewBuilder(r).Instantiate(ctx)
}

// Builder configures the "cyxwiz" host module for later use via Compile or
// Instantiate.
type Builder interface {
	// Compile compiles the host module.
	Compile(context.Context) (wazero.CompiledModule, error)
	// Instantiate instantiates the host module into the runtime.
	Instantiate(context.Context) (api.Closer, error)
}

// NewBuilder returns a Builder of the "cyxwiz" host module for r.
func NewBuilder(r wazero.Runtime) Builder { return &builder{r} }

type builder struct{ r wazero.Runtime }

func (b *builder) hostModuleBuilder() wazero.HostModuleBuilder {
	mb := b.r.NewHostModuleBuilder(ModuleName)
	for _, f := range functions {
		mb.NewFunctionBuilder().
			WithGoModuleFunction(wrap(f.fn), f.params, []api.ValueType{i32}).
			WithParameterNames(f.names...).
			Export(f.name)
	}
	return mb
}

func (b *builder) Compile(ctx context.Context) (wazero.CompiledModule, error) {
	return b.hostModuleBuilder().Compile(ctx)
}

func (b *builder) Instantiate(ctx context.Context) (api.Closer, error) {
	return b.hostModuleBuilder().Instantiate(ctx)
}

// hostFunc is one host function: it reads its arguments from stack and
// returns a handle, a length or 0, or a negative abi.Errno.
type hostFunc func(ctx context.Context, s *Session, mem api.Memory, stack []uint64) int32

type function struct {
	name   string
	params []api.ValueType
	names  []string
	fn     hostFunc
}

func wrap(fn hostFunc) api.GoModuleFunc {
	return func(ctx context.Context, m api.Module, stack []uint64) {
		s := SessionFrom(ctx)
		if s == nil {
			stack[0] = api.EncodeI32(int32(abi.ENOCALL))
			return
		}
		s.ctx = ctx
		stack[0] = api.EncodeI32(fn(ctx, s, m.Memory(), stack))
		s.ctx = nil
	}
}

func params(types ...api.ValueType) []api.ValueType { return types }

var functions = []function{
	{abi.FuncLog, params(i32, i32, i32), []string{"level", "ptr", "len"}, hostLog},
	{abi.FuncConfigGet, params(i32, i32, i32, i32), []string{"key_ptr", "key_len", "out_ptr", "out_cap"}, hostConfigGet},
	{abi.FuncLastError, params(i32, i32), []string{"out_ptr", "out_cap"}, hostLastError},
	{abi.FuncTensorNew, params(i32, i32, i32, i32, i32, i32, i32), []string{"name_ptr", "name_len", "dtype", "shape_ptr", "rank", "data_ptr", "data_len"}, hostTensorNew},
	{abi.FuncTensorInfo, params(i32, i32, i32), []string{"h", "out_ptr", "out_cap"}, hostTensorInfo},
	{abi.FuncTensorRead, params(i32, i32, i32), []string{"h", "out_ptr", "out_cap"}, hostTensorRead},
	{abi.FuncTensorName, params(i32, i32, i32), []string{"h", "name_ptr", "name_len"}, hostTensorName},
	{abi.FuncTensorFree, params(i32), []string{"h"}, hostTensorFree},
	{abi.FuncTensorPin, params(i32), []string{"h"}, hostTensorPin},
	{abi.FuncAffine, params(i32, f32, f32), []string{"h", "scale", "bias"}, hostAffine},
	{abi.FuncNormalize, params(i32, f32, i32, i32, i32, i32), []string{"h", "scale", "mean_ptr", "std_ptr", "n", "axis"}, hostNormalize},
	{abi.FuncSoftmax, params(i32, i32), []string{"h", "axis"}, hostSoftmax},
	{abi.FuncTopK, params(i32, i32, i32), []string{"h", "k", "out_ptr"}, hostTopK},
	{abi.FuncResize, params(i32, i32, i32, i32), []string{"h", "height", "width", "layout"}, hostResize},
	{abi.FuncMatMul, params(i32, i32), []string{"a", "b"}, hostMatMul},
	{abi.FuncAdd, params(i32, i32), []string{"a", "b"}, hostAdd},
	{abi.FuncRelu, params(i32), []string{"h"}, hostRelu},
	{abi.FuncTranspose, params(i32, i32, i32), []string{"h", "perm_ptr", "n"}, hostTranspose},
	{abi.FuncCast, params(i32, i32), []string{"h", "dtype"}, hostCast},
	{abi.FuncReshape, params(i32, i32, i32), []string{"h", "shape_ptr", "rank"}, hostReshape},
	{abi.FuncConcat, params(i32, i32), []string{"handles_ptr", "n"}, hostConcat},
	{abi.FuncImageDecode, params(i32), []string{"h"}, hostImageDecode},
	{abi.FuncInfer, params(i32, i32, i32, i32, i32, i32), []string{"model_ptr", "model_len", "handles_ptr", "n", "out_ptr", "out_cap"}, hostInfer},
}

// Argument helpers. A failed read records the reason for last_error.

func u32(stack []uint64, i int) uint32 { return api.DecodeU32(stack[i]) }

func (s *Session) fail(e abi.Errno, format string, args ...any) int32 {
	s.errMsg = fmt.Sprintf(format, args...)
	if len(s.errMsg) > maxErrMsg {
		// Cut at a character: a split one is not UTF-8.
		s.errMsg = strings.ToValidUTF8(s.errMsg[:maxErrMsg], "") + "…"
	}
	return int32(e)
}

// maxErrMsg bounds what last_error returns: messages may quote guest data.
const maxErrMsg = 4096

// quote is how messages show guest-supplied text (names, keys): quoted,
// and cut to 64 bytes, so that a long one costs the host nothing.
func quote[T string | []byte](b T) string {
	if len(b) > 64 {
		return fmt.Sprintf("%q… (%d bytes)", b[:64], len(b))
	}
	return fmt.Sprintf("%q", b)
}

func (s *Session) read(mem api.Memory, ptr, n uint32, what string) ([]byte, int32) {
	b, ok := mem.Read(ptr, n)
	if !ok {
		return nil, s.fail(abi.EFAULT, "%s: %d bytes at %#x outside guest memory", what, n, ptr)
	}
	return b, 0
}

// tensor returns the tensor behind h, if its shape is one the operations
// may loop over (an input from a request is checked here, on first use).
func (s *Session) tensor(h uint32) (*tensor.Tensor, int32) {
	t, ok := s.Get(h)
	if !ok {
		return nil, s.fail(abi.EBADF, "no tensor handle %d", h)
	}
	if err := s.checkShape(t.Shape); err != nil {
		return nil, s.errno(err)
	}
	return t, 0
}

// name reads a tensor name, which must be UTF-8 (ABI.md): a name that is
// not would fail only later, as a model input or in a response that
// protobuf cannot marshal. It must also fit the tensor list's 16-bit name
// length (abi.MaxNameLen): a longer one would reach the guest cut
// (tensor_info) and could never name an output.
func (s *Session) name(mem api.Memory, ptr, n uint32, fn string) ([]byte, int32) {
	if n > abi.MaxNameLen {
		return nil, s.fail(abi.EINVAL, "%s: a name of %d bytes, at most %d", fn, n, abi.MaxNameLen)
	}
	b, e := s.read(mem, ptr, n, "tensor name")
	if e != 0 {
		return nil, e
	}
	if !utf8.Valid(b) {
		return nil, s.fail(abi.EINVAL, "%s: name %s is not UTF-8", fn, quote(b))
	}
	return b, 0
}

func (s *Session) i64s(mem api.Memory, ptr, n uint32, what string) ([]int64, int32) {
	if n > abi.MaxRank {
		return nil, s.fail(abi.EINVAL, "%s: %d values, at most %d", what, n, abi.MaxRank)
	}
	b, e := s.read(mem, ptr, n*8, what)
	if e != 0 {
		return nil, e
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out, 0
}

func (s *Session) f32s(mem api.Memory, ptr, n uint32, what string) ([]float32, int32) {
	if n > 1<<16 {
		return nil, s.fail(abi.EINVAL, "%s: %d values", what, n)
	}
	b, e := s.read(mem, ptr, n*4, what)
	if e != 0 {
		return nil, e
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, 0
}

func (s *Session) handles(mem api.Memory, ptr, n uint32) ([]*tensor.Tensor, int32) {
	if n > uint32(s.lim.MaxHandles) {
		return nil, s.fail(abi.EINVAL, "%d handles", n)
	}
	b, e := s.read(mem, ptr, n*4, "handles")
	if e != 0 {
		return nil, e
	}
	out := make([]*tensor.Tensor, n)
	for i := range out {
		if out[i], e = s.tensor(binary.LittleEndian.Uint32(b[4*i:])); e != 0 {
			return nil, e
		}
	}
	return out, 0
}

// result runs op, which charges the size of what it makes before making it
// (alloc), and keeps its result. When op fails, everything it charged is
// given back: it holds nothing.
func (s *Session) result(op func() (*tensor.Tensor, error)) int32 {
	before := s.used
	t, err := op()
	if err != nil {
		s.used = before
		return s.errno(err)
	}
	return s.keep(t)
}

func (s *Session) errno(err error) int32 {
	e := abi.EIO
	switch {
	case errors.Is(err, ErrLimit):
		e = abi.ENOMEM
	case errors.Is(err, errInvalid), errors.Is(err, loaders.ErrInvalidInput):
		// The model an infer called refused the guest's inputs: they are
		// the guest's mistake, as a host operation's bad argument is.
		e = abi.EINVAL
	case errors.Is(err, ErrNotAllowed):
		e = abi.EPERM
	}
	// The errno says "invalid argument" already (the SDK prints both).
	return s.fail(e, "%s", strings.TrimPrefix(err.Error(), errInvalid.Error()+": "))
}

// writeOut copies b to the guest's out buffer if it fits and returns
// len(b) either way (the guest retries with a bigger buffer).
func (s *Session) writeOut(mem api.Memory, ptr, capacity uint32, b []byte) int32 {
	if len(b) > math.MaxInt32 {
		return s.fail(abi.ENOMEM, "%d bytes do not fit an i32 length", len(b))
	}
	if uint32(len(b)) <= capacity && !mem.Write(ptr, b) {
		return s.fail(abi.EFAULT, "out buffer of %d bytes at %#x outside guest memory", capacity, ptr)
	}
	return int32(len(b))
}

// logRecordBytes is what a guest's log message costs the node's log
// besides its text (the record's time, level and attributes), counted
// against Limits.MaxCallLogBytes.
const logRecordBytes = 64

// The host functions.

func hostLog(ctx context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	// The whole message must lie in guest memory (a view: nothing is
	// copied), as every pointer and length; its first MaxLogBytes are
	// logged.
	b, e := s.read(mem, u32(st, 1), u32(st, 2), "log message")
	if e != 0 {
		return e
	}
	b = b[:min(len(b), s.lim.MaxLogBytes)]
	// A call logs at most MaxCallLogBytes, as its stdout: a guest logging
	// in a loop wrote 4 KiB a message to the node's log until its deadline.
	// A message counts logRecordBytes besides its text: empty ones,
	// counting nothing, were logged without end.
	cost := len(b) + logRecordBytes
	if cost > s.lim.MaxCallLogBytes-s.logged {
		s.dropped++
		s.droppedBytes += len(b)
		return 0
	}
	s.logged += cost
	s.env.Log.Log(ctx, slog.Level(api.DecodeI32(st[0])), string(b))
	return 0
}

func hostConfigGet(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	k, e := s.read(mem, u32(st, 0), u32(st, 1), "config key")
	if e != 0 {
		return e
	}
	v, ok := s.env.Config[string(k)]
	if !ok {
		return s.fail(abi.ENOENT, "no config key %s", quote(k))
	}
	return s.writeOut(mem, u32(st, 2), u32(st, 3), []byte(v))
}

func hostLastError(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	return s.writeOut(mem, u32(st, 0), u32(st, 1), []byte(s.errMsg))
}

func hostTensorNew(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	name, e := s.name(mem, u32(st, 0), u32(st, 1), "tensor_new")
	if e != 0 {
		return e
	}
	if d := u32(st, 2); d > math.MaxUint8 || !tensor.DType(d).Valid() {
		return s.fail(abi.EINVAL, "tensor_new: no dtype %d", d)
	}
	dt := tensor.DType(u32(st, 2))
	shape, e := s.i64s(mem, u32(st, 3), u32(st, 4), "tensor shape")
	if e != 0 {
		return e
	}
	data, e := s.read(mem, u32(st, 5), u32(st, 6), "tensor data")
	if e != 0 {
		return e
	}
	if err := s.checkShape(shape); err != nil {
		return s.errno(err)
	}
	// The name is host memory too: charged with the data, and for BYTES
	// a header per element (each takes at least its 4-byte length).
	bytes := int64(len(data)) + int64(len(name))
	if dt == tensor.Bytes {
		n := tensor.NumElements(shape)
		if n < 0 || n > int64(len(data))/4 {
			return s.fail(abi.EINVAL, "tensor %s: %d BYTES elements need at least %d bytes, got %d", quote(name), n, 4*max(n, 0), len(data))
		}
		bytes += stringHeader * n
	}
	if err := s.charge(bytes); err != nil {
		return s.errno(err)
	}
	t := &tensor.Tensor{Name: string(name), DType: dt, Shape: shape}
	if dt == tensor.Bytes {
		// One copy of the guest's data, which the elements share, is what
		// was charged: a copy per element (rounded up to an allocation
		// size) and a second list of them took twice that for small ones.
		strs, err := abi.DecodeStrings(append([]byte(nil), data...), tensor.NumElements(shape))
		if err != nil {
			s.used -= bytes
			return s.fail(abi.EINVAL, "tensor %s: %v", quote(name), err)
		}
		t.Strings = strs
	} else {
		t.Data = append([]byte(nil), data...)
	}
	if err := t.Validate(); err != nil {
		s.used -= bytes
		return s.fail(abi.EINVAL, "%v", err)
	}
	h, err := s.store(t, bytes)
	if err != nil {
		s.used -= bytes
		return s.errno(err)
	}
	s.tab[h].name = int64(len(name))
	return int32(h)
}

// Info returns the list entry describing handle h of tensor t.
func Info(h uint32, t *tensor.Tensor) abi.Tensor {
	n := uint64(len(t.Data))
	if t.DType == tensor.Bytes {
		n = abi.StringsLen(t.Strings)
	}
	return abi.Tensor{Name: t.Name, DType: uint8(t.DType), Shape: t.Shape, Handle: h, DataLen: n}
}

func hostTensorInfo(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	t, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	b := abi.Encode(nil, []abi.Tensor{Info(u32(st, 0), t)})
	return s.writeOut(mem, u32(st, 1), u32(st, 2), b)
}

func hostTensorRead(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	t, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	if t.DType != tensor.Bytes {
		return s.writeOut(mem, u32(st, 1), u32(st, 2), t.Data)
	}
	n := abi.StringsLen(t.Strings)
	if n > uint64(u32(st, 2)) {
		if n > math.MaxInt32 {
			return s.fail(abi.ENOMEM, "%d bytes do not fit an i32 length", n)
		}
		return int32(n)
	}
	// Encoded straight into the guest's buffer: a copy made on the host
	// first was memory no limit counted, taken again at every call, even
	// for a buffer outside guest memory.
	out, ok := mem.Read(u32(st, 1), uint32(n))
	if !ok {
		return s.fail(abi.EFAULT, "out buffer of %d bytes at %#x outside guest memory", u32(st, 2), u32(st, 1))
	}
	abi.AppendStrings(out[:0], t.Strings) // n bytes: within out
	return int32(n)
}

func hostTensorName(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	t, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	name, e := s.name(mem, u32(st, 1), u32(st, 2), "tensor_name")
	if e != 0 {
		return e
	}
	sl := s.tab[u32(st, 0)]
	if err := s.charge(int64(len(name))); err != nil {
		return s.errno(err)
	}
	s.used -= sl.name // the old name's charge
	// Tensors are shared (inputs, reshape results): rename a copy of the
	// header, never the tensor itself.
	c := *t
	c.Name = string(name)
	sl.t = &c
	sl.bytes += int64(len(name)) - sl.name
	sl.name = int64(len(name))
	return 0
}

func hostTensorFree(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	sl, ok := s.tab[u32(st, 0)]
	if !ok {
		return s.fail(abi.EBADF, "no tensor handle %d", u32(st, 0))
	}
	s.used -= sl.bytes
	delete(s.tab, u32(st, 0))
	return 0
}

func hostTensorPin(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	sl, ok := s.tab[u32(st, 0)]
	if !ok {
		return s.fail(abi.EBADF, "no tensor handle %d", u32(st, 0))
	}
	// A pinned tensor stays on the host after the call: all of it counts,
	// also a call input (not charged while the caller holds it).
	if more := size(sl.t) + int64(len(sl.t.Name)) - sl.bytes; !sl.pinned && more > 0 {
		if err := s.charge(more); err != nil {
			return s.errno(err)
		}
		sl.bytes += more
		sl.name = int64(len(sl.t.Name))
	}
	if !sl.pinned {
		// A pinned tensor outlives the call, and the call's inputs (and
		// views of them: reshape, renames) lie in the request's memory,
		// which the server reuses for other requests once this one is
		// answered: keep a copy of the host's own.
		c := *sl.t
		c.Shape = slices.Clone(c.Shape)
		c.Data = bytes.Clone(c.Data)
		if c.Strings != nil {
			c.Strings = cloneStrings(c.Strings)
		}
		sl.t = &c
	}
	sl.pinned = true
	return 0
}

// cloneStrings copies BYTES elements into one buffer, which the copies
// share: what size charges for them. A copy each, rounded up to an
// allocation size, took a third more for one-byte elements.
func cloneStrings(s [][]byte) [][]byte {
	n := 0
	for _, e := range s {
		n += len(e)
	}
	buf := make([]byte, 0, n)
	out := make([][]byte, len(s))
	for i, e := range s {
		buf = append(buf, e...)
		out[i] = buf[len(buf)-len(e) : len(buf) : len(buf)]
	}
	return out
}

func hostAffine(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) { return s.affine(x, api.DecodeF32(st[1]), api.DecodeF32(st[2])) })
}

func hostNormalize(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	mean, e := s.f32s(mem, u32(st, 2), u32(st, 4), "mean")
	if e != 0 {
		return e
	}
	std, e := s.f32s(mem, u32(st, 3), u32(st, 4), "std")
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) {
		return s.normalize(x, api.DecodeF32(st[1]), mean, std, int(api.DecodeI32(st[5])))
	})
}

func hostSoftmax(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) { return s.softmax(x, int(api.DecodeI32(st[1]))) })
}

func hostTopK(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	// Check the out buffer before computing.
	if _, e := s.read(mem, u32(st, 2), 8, "topk out"); e != 0 {
		return e
	}
	before := s.used
	vals, idx, err := s.topk(x, int(api.DecodeI32(st[1])))
	if err != nil {
		s.used = before
		return s.errno(err)
	}
	hv := s.keep(vals)
	if hv < 0 {
		s.used -= size(idx)
		return hv
	}
	hi := s.keep(idx)
	if hi < 0 {
		s.drop(uint32(hv))
		return hi
	}
	var out [8]byte
	binary.LittleEndian.PutUint32(out[:], uint32(hv))
	binary.LittleEndian.PutUint32(out[4:], uint32(hi))
	mem.Write(u32(st, 2), out[:])
	return 0
}

func hostResize(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) {
		return s.resize(x, int(api.DecodeI32(st[1])), int(api.DecodeI32(st[2])), int(api.DecodeI32(st[3])))
	})
}

func binary2(s *Session, st []uint64, op func(a, b *tensor.Tensor) (*tensor.Tensor, error)) int32 {
	a, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	b, e := s.tensor(u32(st, 1))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) { return op(a, b) })
}

func hostMatMul(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	return binary2(s, st, s.matmul)
}

func hostAdd(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	return binary2(s, st, s.add)
}

func hostRelu(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) { return s.relu(x) })
}

func hostTranspose(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	p, e := s.i64s(mem, u32(st, 1), u32(st, 2), "perm")
	if e != 0 {
		return e
	}
	perm := make([]int, len(p))
	for i, v := range p {
		perm[i] = int(v)
	}
	return s.result(func() (*tensor.Tensor, error) { return s.transpose(x, perm) })
}

func hostCast(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	dt := u32(st, 1)
	if dt > math.MaxUint8 || !tensor.DType(dt).Valid() {
		return s.fail(abi.EINVAL, "cast to dtype %d: no such dtype", dt)
	}
	return s.result(func() (*tensor.Tensor, error) { return s.cast(x, tensor.DType(dt)) })
}

func hostReshape(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	shape, e := s.i64s(mem, u32(st, 1), u32(st, 2), "shape")
	if e != 0 {
		return e
	}
	y, err := reshape(x, shape)
	if err != nil {
		return s.errno(err)
	}
	if err := s.checkShape(y.Shape); err != nil {
		return s.errno(err)
	}
	// y shares x's data, but outlives a free of x: it is charged in full,
	// so that freeing x cannot refund memory y still holds.
	if err := s.charge(size(y)); err != nil {
		return s.errno(err)
	}
	return s.keep(y)
}

func hostConcat(_ context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	parts, e := s.handles(mem, u32(st, 0), u32(st, 1))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) { return s.concat(parts) })
}

func hostImageDecode(_ context.Context, s *Session, _ api.Memory, st []uint64) int32 {
	x, e := s.tensor(u32(st, 0))
	if e != 0 {
		return e
	}
	return s.result(func() (*tensor.Tensor, error) { return s.decodeImage(x) })
}

func hostInfer(ctx context.Context, s *Session, mem api.Memory, st []uint64) int32 {
	// A model is named in at most abi.MaxNameLen bytes, as a tensor: the
	// name is copied into the lookup, a kept retry and the errors that
	// quote it (an 8 MiB name made the host allocate 364 MiB a call).
	if n := u32(st, 1); n > abi.MaxNameLen {
		return s.fail(abi.EINVAL, "infer: a model name of %d bytes, at most %d", n, abi.MaxNameLen)
	}
	model, e := s.read(mem, u32(st, 0), u32(st, 1), "model name")
	if e != 0 {
		return e
	}
	in, e := s.handles(mem, u32(st, 2), u32(st, 3))
	if e != 0 {
		return e
	}
	outCap := u32(st, 5)
	if outCap > uint32(s.lim.MaxHandles) {
		return s.fail(abi.EINVAL, "infer: room for %d outputs, at most %d handles", outCap, s.lim.MaxHandles)
	}
	if _, e := s.read(mem, u32(st, 4), outCap*4, "infer out"); e != 0 {
		return e
	}
	// A retry after "out_cap too small" gets the outputs the model gave
	// then, already charged: the model runs once.
	out, charged := s.takePending(string(model), in)
	if out == nil {
		s.dropPending()
		if s.env.Infer == nil {
			return s.fail(abi.EPERM, "infer: no model for this guest")
		}
		var err error
		out, err = s.env.Infer(ctx, string(model), in)
		s.inferErr = err // the latest call's: a guest may fall back after a failure
		if err != nil {
			return s.errno(fmt.Errorf("infer %s: %w", quote(model), err))
		}
		// Every output is host memory the guest now holds (a handle, or
		// kept for a retry): charge it all, names included, up front.
		for _, t := range out {
			charged += size(t) + int64(len(t.Name))
		}
		if err := s.charge(charged); err != nil {
			return s.errno(fmt.Errorf("infer %s: %d outputs: %w", quote(model), len(out), err))
		}
	}
	if free := s.lim.MaxHandles - len(s.tab); len(out) > free {
		s.used -= charged
		s.hit = true
		return s.errno(fmt.Errorf("infer %s: %d outputs, %d free handles: %w", quote(model), len(out), free, ErrLimit))
	}
	if uint32(len(out)) > outCap {
		// The general rule for out buffers: the full count, nothing
		// written. The outputs wait, charged, for a retry with room.
		s.pending = &pendingInfer{model: string(model), in: in, out: out, bytes: charged}
		return int32(len(out))
	}
	buf := make([]byte, 4*len(out))
	kept := make([]uint32, 0, len(out))
	undo := func() {
		for _, h := range kept {
			s.drop(h) // refunds what the handle holds
		}
		for _, t := range out[len(kept):] {
			s.used -= size(t) + int64(len(t.Name))
		}
	}
	for i, t := range out {
		h, err := s.store(t, size(t)+int64(len(t.Name)))
		if err != nil {
			undo()
			return s.errno(err)
		}
		s.tab[h].name = int64(len(t.Name))
		kept = append(kept, h)
		binary.LittleEndian.PutUint32(buf[4*i:], h)
	}
	if !mem.Write(u32(st, 4), buf) {
		undo()
		return s.fail(abi.EFAULT, "infer out: %d bytes at %#x outside guest memory", len(buf), u32(st, 4))
	}
	return int32(len(out))
}
