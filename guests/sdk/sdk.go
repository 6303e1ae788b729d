// Package sdk is what a cyxwiz guest module imports: typed tensors, the
// host tensor operations as Go functions, and one registration call that
// wires the module's exports (guest ABI v1, guests/ABI.md) to its handlers.
//
// A guest is a Go main package built with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o guest.wasm .
//
// that registers its handlers in init (a reactor module never runs main):
//
//	func init() {
//		sdk.Register(sdk.Handlers{Postprocess: post})
//	}
//
//	func post(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
//		p, err := sdk.Softmax(in[0], -1)
//		...
//	}
//
//	func main() {}
//
// Host functions work only during an entry-point call: from init (the
// module's _initialize), Log, Config and the tensor operations fail with
// ENOCALL. Build guest tensors (Float32s, ...) there; read config in a
// handler.
//
// Tensors live on the host: an operation returns a handle-backed *Tensor
// and nothing is copied into the guest until it reads the elements
// (Data, Float32, Int64, Strings). Handles last for the call, unless
// pinned (Pin) to survive until the instance is discarded.
//
// The package builds for any platform so that `go vet ./...` covers the
// guests; off wasip1 every host function fails with ENOCALL.
package sdk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
)

// DType is a KServe datatype; the numbers are the ABI's.
type DType uint8

// The datatypes.
const (
	Bool DType = iota + 1
	Uint8
	Uint16
	Uint32
	Uint64
	Int8
	Int16
	Int32
	Int64
	FP16
	BF16
	FP32
	FP64
	Bytes
)

var dtypeNames = [...]string{"INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"}

// String is the KServe name of d.
func (d DType) String() string {
	if int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return fmt.Sprintf("DType(%d)", d)
}

// Size is the width of one element (0 for BYTES).
func (d DType) Size() int { return abi.Size(uint8(d)) }

// Tensor is a named, typed, shaped block of elements, held either by the
// guest (built with New, Float32s, Int64s, Strings) or by the host (a call
// input or an operation's result).
type Tensor struct {
	name   string
	dtype  DType
	shape  []int64
	ref    *hostRef // the host tensor, nil for a guest tensor not uploaded
	known  bool     // name, dtype, shape are filled in
	loaded bool     // data/strs hold the elements
	data   []byte
	strs   [][]byte
	err    error // BYTES data given to New that is no list of elements
}

// hostRef is a host tensor handle, shared by a tensor and its Named copies.
// A handle lives until the end of the entry-point call that made it unless
// pinned (guests/ABI.md): a tensor kept from one call to the next (a guest
// constant, a stored input) must not name it afterwards, where it is
// unknown or, once numbers wrap, another tensor.
type hostRef struct {
	h      uint32 // 0 once freed
	call   uint64 // the callSeq that made it
	pinned bool
}

// callSeq numbers the entry-point calls of the instance.
var callSeq uint64

func newRef(h uint32) *hostRef { return &hostRef{h: h, call: callSeq} }

// live returns the handle if it may still be used, 0 otherwise.
func (r *hostRef) live() uint32 {
	if r == nil || r.h == 0 || !r.pinned && r.call != callSeq {
		return 0
	}
	return r.h
}

// errStale is the error of a host tensor used after its handle ended.
func (t *Tensor) errStale(fn string) error {
	return &HostError{Func: fn, Errno: abi.EBADF, Msg: fmt.Sprintf("tensor %q: its host tensor was freed, or ended with the call that made it (Pin keeps one for later calls)", t.name)}
}

// New returns a guest tensor with raw little-endian data; for BYTES, data
// is the ABI's encoding of the elements, a u32 length and the bytes of
// each (the elements then alias data). The tensor keeps data but copies
// shape: a caller reusing its shape slice changes nothing.
func New(name string, dt DType, shape []int64, data []byte) *Tensor {
	t := &Tensor{name: name, dtype: dt, shape: slices.Clone(shape), known: true, loaded: true, data: data}
	if dt == Bytes {
		t.data = nil
		if t.strs, t.err = abi.DecodeStrings(data, -1); t.err != nil {
			t.err = fmt.Errorf("tensor %q: %w", name, t.err)
		}
	}
	return t
}

// Float32s returns an FP32 guest tensor.
func Float32s(name string, shape []int64, v []float32) *Tensor {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return New(name, FP32, shape, b)
}

// Int64s returns an INT64 guest tensor.
func Int64s(name string, shape []int64, v []int64) *Tensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return New(name, Int64, shape, b)
}

// Strings returns a BYTES guest tensor.
func Strings(name string, shape []int64, v [][]byte) *Tensor {
	return &Tensor{name: name, dtype: Bytes, shape: slices.Clone(shape), known: true, loaded: true, strs: v}
}

func fromHandle(h uint32) *Tensor { return &Tensor{ref: newRef(h)} }

func (t *Tensor) info() {
	if t.known {
		return
	}
	h := t.ref.live()
	if h == 0 {
		t.known = true // a handle gone: leave the zero description
		return
	}
	var buf [256]byte
	n := tensorInfo(h, ptr(buf[:]), uint32(len(buf)))
	var b []byte
	if n > int32(len(buf)) { // a long name: ask again with room for it
		b = make([]byte, n)
		n = tensorInfo(h, ptr(b), uint32(len(b)))
	} else {
		b = buf[:max(n, 0)]
	}
	if n < 0 {
		t.known = true // an invalid handle: leave the zero description
		return
	}
	list, err := abi.Decode(b[:n], nil)
	if err != nil || len(list) != 1 {
		t.known = true
		return
	}
	t.name, t.dtype, t.shape, t.known = list[0].Name, DType(list[0].DType), list[0].Shape, true
}

// Name is the tensor's name.
func (t *Tensor) Name() string { t.info(); return t.name }

// DType is the element type.
func (t *Tensor) DType() DType { t.info(); return t.dtype }

// Shape is the list of dimensions.
func (t *Tensor) Shape() []int64 { t.info(); return slices.Clone(t.shape) }

// Len is the number of elements.
func (t *Tensor) Len() int64 {
	n := int64(1)
	for _, d := range t.Shape() {
		n *= d
	}
	return n
}

// Named returns t under another name; the elements are shared.
func (t *Tensor) Named(name string) *Tensor {
	t.info()
	c := *t
	c.name = name
	return &c
}

func (t *Tensor) load() error {
	if t.loaded {
		return t.err
	}
	t.info()
	h := t.ref.live()
	if h == 0 {
		return t.errStale("tensor_read")
	}
	n := tensorRead(h, 0, 0)
	if n < 0 {
		return hostErr("tensor_read", n)
	}
	b := make([]byte, n)
	if n > 0 {
		if m := tensorRead(h, ptr(b), uint32(n)); m != n {
			return hostErr("tensor_read", m)
		}
	}
	if t.dtype == Bytes {
		s, err := abi.DecodeStrings(b, t.Len())
		if err != nil {
			return fmt.Errorf("tensor %q: %w", t.name, err)
		}
		t.strs = s
	} else {
		t.data = b
	}
	t.loaded = true
	return nil
}

// Data returns the raw little-endian elements of a fixed-width tensor,
// copying them from the host on first use.
func (t *Tensor) Data() ([]byte, error) {
	if err := t.load(); err != nil {
		return nil, err
	}
	if t.dtype == Bytes {
		return nil, fmt.Errorf("tensor %q is BYTES: use Strings", t.name)
	}
	return t.data, nil
}

// Float32 returns the elements of an FP32 tensor.
func (t *Tensor) Float32() ([]float32, error) {
	b, err := t.typed(FP32)
	if err != nil {
		return nil, err
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

// Int64 returns the elements of an INT64 tensor.
func (t *Tensor) Int64() ([]int64, error) {
	b, err := t.typed(Int64)
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(b)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out, nil
}

func (t *Tensor) typed(dt DType) ([]byte, error) {
	if t.DType() != dt {
		return nil, fmt.Errorf("tensor %q is %v, not %v", t.Name(), t.DType(), dt)
	}
	return t.Data()
}

// Strings returns the elements of a BYTES tensor.
func (t *Tensor) Strings() ([][]byte, error) {
	if err := t.load(); err != nil {
		return nil, err
	}
	if t.dtype != Bytes {
		return nil, fmt.Errorf("tensor %q is %v, not BYTES", t.name, t.dtype)
	}
	return t.strs, nil
}

// handle returns the host handle, uploading a guest tensor first (again,
// when the handle of an earlier upload has ended).
func (t *Tensor) handle() (uint32, error) {
	if h := t.ref.live(); h != 0 {
		return h, nil
	}
	if !t.loaded {
		return 0, t.errStale("tensor")
	}
	if t.err != nil {
		return 0, t.err
	}
	shape := make([]byte, 8*len(t.shape))
	for i, d := range t.shape {
		binary.LittleEndian.PutUint64(shape[8*i:], uint64(d))
	}
	data := t.data
	if t.dtype == Bytes {
		data = abi.AppendStrings(nil, t.strs)
	}
	name := []byte(t.name)
	h := tensorNew(ptr(name), uint32(len(name)), uint32(t.dtype), ptr(shape), uint32(len(t.shape)), ptr(data), uint32(len(data)))
	if h < 0 {
		return 0, hostErr("tensor_new", h)
	}
	t.ref = newRef(uint32(h))
	return uint32(h), nil
}

// Pin keeps t's host tensor past the end of the call, for state an instance
// keeps between calls (a custom format's weights).
func (t *Tensor) Pin() error {
	h, err := t.handle()
	if err != nil {
		return err
	}
	if r := tensorPin(h); r < 0 {
		return hostErr("tensor_pin", r)
	}
	t.ref.pinned = true
	return nil
}

// Free releases t's host tensor (and that of its Named copies) before the
// end of the call, or, when pinned, of the instance.
func (t *Tensor) Free() {
	if h := t.ref.live(); h != 0 {
		tensorFree(h)
	}
	if t.ref != nil {
		t.ref.h = 0
	}
}

// HostError is a failed host function: its errno and the host's message.
type HostError struct {
	Func  string
	Errno abi.Errno
	Msg   string
}

func (e *HostError) Error() string { return fmt.Sprintf("cyxwiz.%s: %v: %s", e.Func, e.Errno, e.Msg) }

// Is matches an abi.Errno, so errors.Is(err, abi.ENOMEM) works.
func (e *HostError) Is(target error) bool {
	var n abi.Errno
	return errors.As(target, &n) && n == e.Errno
}

func hostErr(fn string, code int32) error {
	var buf [512]byte
	n := lastError(ptr(buf[:]), uint32(len(buf)))
	msg := ""
	switch {
	case n > int32(len(buf)): // the host wrote nothing: ask again with room
		b := make([]byte, n)
		if m := lastError(ptr(b), uint32(len(b))); m > 0 && m <= n {
			msg = string(b[:m])
		}
	case n > 0:
		msg = string(buf[:n])
	}
	return &HostError{Func: fn, Errno: abi.Errno(code), Msg: msg}
}

// ptr is the guest address of b's first byte (0 for an empty slice). Go's
// garbage collector does not move objects, and every caller keeps b alive
// for the duration of the host call.
func ptr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// Level is a log level (slog's numbers).
type Level int32

// Log levels.
const (
	LevelDebug Level = abi.LevelDebug
	LevelInfo  Level = abi.LevelInfo
	LevelWarn  Level = abi.LevelWarn
	LevelError Level = abi.LevelError
)

// Log writes msg to the deployment's log.
func Log(level Level, msg string) {
	b := []byte(msg)
	hostLog(int32(level), ptr(b), uint32(len(b)))
}

// Logf formats and logs.
func Logf(level Level, format string, args ...any) { Log(level, fmt.Sprintf(format, args...)) }

// Config returns the deployment's config value for key.
func Config(key string) (string, bool) {
	k := []byte(key)
	var buf [256]byte
	n := configGet(ptr(k), uint32(len(k)), ptr(buf[:]), uint32(len(buf)))
	if n < 0 {
		return "", false
	}
	if int(n) <= len(buf) {
		return string(buf[:n]), true
	}
	b := make([]byte, n)
	if m := configGet(ptr(k), uint32(len(k)), ptr(b), uint32(len(b))); m != n {
		return "", false
	}
	return string(b), true
}

func result(fn string, h int32) (*Tensor, error) {
	if h < 0 {
		return nil, hostErr(fn, h)
	}
	return fromHandle(uint32(h)), nil
}

func unary(fn string, x *Tensor, op func(h uint32) int32) (*Tensor, error) {
	h, err := x.handle()
	if err != nil {
		return nil, err
	}
	return result(fn, op(h))
}

// Affine returns x*scale + bias (FP32 or UINT8 in, FP32 out).
func Affine(x *Tensor, scale, bias float32) (*Tensor, error) {
	return unary("affine", x, func(h uint32) int32 { return affine(h, scale, bias) })
}

// Normalize returns (x*scale - mean[c]) / std[c], c the index along axis.
func Normalize(x *Tensor, scale float32, mean, std []float32, axis int) (*Tensor, error) {
	if len(mean) != len(std) {
		return nil, fmt.Errorf("normalize: %d means, %d stds", len(mean), len(std))
	}
	if axis < math.MinInt32 || axis > math.MaxInt32 {
		return nil, fmt.Errorf("sdk: normalize: axis %d is out of range", axis)
	}
	m, s := f32bytes(mean), f32bytes(std)
	return unary("normalize", x, func(h uint32) int32 {
		return normalize(h, scale, ptr(m), ptr(s), uint32(len(mean)), int32(axis))
	})
}

// Softmax along axis (negative counts from the end).
func Softmax(x *Tensor, axis int) (*Tensor, error) {
	if axis < math.MinInt32 || axis > math.MaxInt32 {
		// int32(axis) would be another axis (1<<32 - 1 the last one).
		return nil, fmt.Errorf("sdk: softmax: axis %d is out of range", axis)
	}
	return unary("softmax", x, func(h uint32) int32 { return softmax(h, int32(axis)) })
}

// TopK returns the k largest values along the last axis, largest first, and
// their INT64 indices.
func TopK(x *Tensor, k int) (values, indices *Tensor, err error) {
	h, err := x.handle()
	if err != nil {
		return nil, nil, err
	}
	if k < 0 || k > math.MaxInt32 {
		return nil, nil, fmt.Errorf("sdk: topk: k=%d is out of range", k)
	}
	out := make([]byte, 8)
	if r := topk(h, int32(k), ptr(out)); r < 0 {
		return nil, nil, hostErr("topk", r)
	}
	return fromHandle(binary.LittleEndian.Uint32(out)), fromHandle(binary.LittleEndian.Uint32(out[4:])), nil
}

// Layout names the dimension order of an image tensor.
type Layout int32

// Image layouts.
const (
	NCHW Layout = abi.LayoutNCHW
	HWC  Layout = abi.LayoutHWC
)

// Resize scales an image bilinearly to height×width (FP32 result).
func Resize(x *Tensor, height, width int, layout Layout) (*Tensor, error) {
	if height < 0 || height > math.MaxInt32 || width < 0 || width > math.MaxInt32 {
		return nil, fmt.Errorf("sdk: resize to %dx%d is out of range", height, width)
	}
	return unary("resize", x, func(h uint32) int32 { return resize(h, int32(height), int32(width), int32(layout)) })
}

func binaryOp(fn string, a, b *Tensor, op func(a, b uint32) int32) (*Tensor, error) {
	ha, err := a.handle()
	if err != nil {
		return nil, err
	}
	hb, err := b.handle()
	if err != nil {
		return nil, err
	}
	return result(fn, op(ha, hb))
}

// MatMul multiplies a [..., K] by b [K, N].
func MatMul(a, b *Tensor) (*Tensor, error) { return binaryOp("matmul", a, b, matmul) }

// Add returns a + b, b of a's shape or of its trailing dimensions.
func Add(a, b *Tensor) (*Tensor, error) { return binaryOp("add", a, b, add) }

// Relu returns max(x, 0).
func Relu(x *Tensor) (*Tensor, error) { return unary("relu", x, relu) }

// Transpose permutes the dimensions.
func Transpose(x *Tensor, perm ...int) (*Tensor, error) {
	p := make([]int64, len(perm))
	for i, v := range perm {
		p[i] = int64(v)
	}
	b := i64bytes(p)
	return unary("transpose", x, func(h uint32) int32 { return transpose(h, ptr(b), uint32(len(p))) })
}

// Cast converts the elements to dt.
func Cast(x *Tensor, dt DType) (*Tensor, error) {
	return unary("cast", x, func(h uint32) int32 { return cast(h, uint32(dt)) })
}

// Reshape gives x a new shape (one dimension may be -1); no copy.
func Reshape(x *Tensor, shape ...int64) (*Tensor, error) {
	b := i64bytes(shape)
	return unary("reshape", x, func(h uint32) int32 { return reshape(h, ptr(b), uint32(len(shape))) })
}

// Concat joins tensors along dimension 0.
func Concat(parts ...*Tensor) (*Tensor, error) {
	hs, err := handles(parts)
	if err != nil {
		return nil, err
	}
	return result("concat", concat(ptr(hs), uint32(len(parts))))
}

// DecodeImage decodes a PNG or JPEG (one BYTES element) to UINT8 RGB [H, W, 3].
func DecodeImage(x *Tensor) (*Tensor, error) { return unary("image_decode", x, imageDecode) }

// Infer runs a model on the host: "" is the deployment's own model, another
// name a deployment the manifest allows. Inputs are matched by name.
func Infer(model string, in ...*Tensor) ([]*Tensor, error) {
	// The host takes each input's name from its host tensor: rename them.
	// Named copies of one tensor share a host tensor, which takes one name:
	// a second name gets a host tensor of its own (a reshape to the same
	// shape shares the elements).
	hs := make([]byte, 4*len(in))
	named := make(map[uint32]string, len(in))
	for i, t := range in {
		h, err := t.handle()
		if err != nil {
			return nil, err
		}
		name := t.Name()
		if prev, ok := named[h]; ok && prev != name {
			shape := i64bytes(t.Shape())
			r := reshape(h, ptr(shape), uint32(len(shape)/8))
			if r < 0 {
				return nil, hostErr("reshape", r)
			}
			h = uint32(r)
		}
		named[h] = name
		b := []byte(name)
		if r := tensorName(h, ptr(b), uint32(len(b))); r < 0 {
			return nil, hostErr("tensor_name", r)
		}
		binary.LittleEndian.PutUint32(hs[4*i:], h)
	}
	m := []byte(model)
	// Room for 64 outputs; a model with more gets their count back and
	// nothing written, and the host keeps its outputs for a retry with
	// the same inputs (not renamed again): the model runs once.
	out := make([]byte, 4*64)
	n := infer(ptr(m), uint32(len(m)), ptr(hs), uint32(len(in)), ptr(out), 64)
	for try := 0; n > int32(len(out)/4) && try < 2; try++ {
		out = make([]byte, 4*int(n))
		n = infer(ptr(m), uint32(len(m)), ptr(hs), uint32(len(in)), ptr(out), uint32(n))
	}
	if n < 0 {
		return nil, hostErr("infer", n)
	}
	if n > int32(len(out)/4) {
		return nil, fmt.Errorf("sdk: infer: %d outputs, room for %d", n, len(out)/4)
	}
	res := make([]*Tensor, n)
	for i := range res {
		res[i] = fromHandle(binary.LittleEndian.Uint32(out[4*i:]))
	}
	return res, nil
}

func handles(ts []*Tensor) ([]byte, error) {
	b := make([]byte, 4*len(ts))
	for i, t := range ts {
		h, err := t.handle()
		if err != nil {
			return nil, err
		}
		binary.LittleEndian.PutUint32(b[4*i:], h)
	}
	return b, nil
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func i64bytes(v []int64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return b
}

// QueueState is what a batch policy sees of its deployment's queue.
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

// Decision is a batch policy's answer: run the Run oldest requests now
// (0..Queued), or, when Run is 0, ask again after Wait (>= 0; 0: at the
// next arrival). A decision outside those ranges is the policy's error.
type Decision struct {
	Run  int
	Wait time.Duration
}

// Handlers are a guest's entry points; nil ones are not provided.
type Handlers struct {
	Preprocess  func(in []*Tensor) ([]*Tensor, error)
	Postprocess func(in []*Tensor) ([]*Tensor, error)
	BatchPolicy func(q QueueState) (Decision, error)
	// FormatLoad receives a custom format's model file once per instance.
	FormatLoad  func(model []byte) error
	FormatInfer func(in []*Tensor) ([]*Tensor, error)
	// Signature declares the tensors the guest takes and gives, which the
	// node shows clients (KServe ModelMetadata) and checks requests
	// against. A preprocess guest declares Inputs (what clients send), a
	// postprocess guest Outputs (what they get back), a FORMAT guest both
	// (it is called after FormatLoad, so it may read them from the model).
	Signature func() (Signature, error)
}

// TensorMeta describes one tensor of a Signature. -1 in Shape is a
// dimension of any size; a nil Shape is any rank, an empty one a scalar.
type TensorMeta struct {
	Name  string
	DType DType
	Shape []int64
}

// Signature lists the tensors a guest takes and gives. A nil list is not
// declared (clients are told nothing about that side); an empty one
// declares none.
type Signature struct {
	Inputs, Outputs []TensorMeta
}

var handlers Handlers

// Register sets the guest's handlers. Call it from init.
func Register(h Handlers) { handlers = h }

func entrySet() int32 {
	var set int32
	for e, ok := range map[abi.Entry]bool{
		abi.Preprocess:  handlers.Preprocess != nil,
		abi.Postprocess: handlers.Postprocess != nil,
		abi.BatchPolicy: handlers.BatchPolicy != nil,
		abi.FormatLoad:  handlers.FormatLoad != nil,
		abi.FormatInfer: handlers.FormatInfer != nil,
		abi.Signature:   handlers.Signature != nil,
	} {
		if ok {
			set |= e.Bit()
		}
	}
	return set
}

// The call buffers: the host writes inputs into inBuf (cyxwiz_alloc), the
// guest leaves its result in outBuf until the next call.
var inBuf, outBuf []byte

func allocIn(size int32) uint32 {
	if size < 0 {
		return 0
	}
	if int(size) > cap(inBuf) || cap(inBuf) == 0 {
		inBuf = make([]byte, max(size, 1))
	}
	inBuf = inBuf[:size]
	return ptr(inBuf[:max(size, 1):cap(inBuf)])
}

func dispatch(e abi.Entry, n int32) int64 {
	callSeq++ // the handles of earlier calls have ended, unless pinned
	out, err := call(e, inBuf[:n])
	if err != nil {
		outBuf = append(outBuf[:0], err.Error()...)
		if len(outBuf) == 0 {
			outBuf = append(outBuf, "error"...)
		}
		return -abi.Pack(ptr(outBuf), uint32(len(outBuf)))
	}
	outBuf = abi.Encode(outBuf[:0], out)
	return abi.Pack(ptr(outBuf), uint32(len(outBuf)))
}

func call(e abi.Entry, buf []byte) ([]abi.Tensor, error) {
	list, err := abi.Decode(append([]byte(nil), buf...), abi.Size)
	if err != nil {
		return nil, err
	}
	in := make([]*Tensor, len(list))
	for i, t := range list {
		if t.Handle != 0 {
			in[i] = &Tensor{name: t.Name, dtype: DType(t.DType), shape: t.Shape, ref: newRef(t.Handle), known: true}
		} else {
			in[i] = &Tensor{name: t.Name, dtype: DType(t.DType), shape: t.Shape, known: true, loaded: true, data: t.Data, strs: t.Strings}
		}
	}
	var out []*Tensor
	switch e {
	case abi.Preprocess:
		out, err = tensorsCall(handlers.Preprocess, in)
	case abi.Postprocess:
		out, err = tensorsCall(handlers.Postprocess, in)
	case abi.FormatInfer:
		out, err = tensorsCall(handlers.FormatInfer, in)
	case abi.BatchPolicy:
		out, err = batchCall(in)
	case abi.FormatLoad:
		err = loadCall(in)
	case abi.Signature:
		out, err = signatureCall()
	}
	if err != nil {
		return nil, err
	}
	return encodeList(out)
}

// signatureCall encodes the guest's Signature as abi.SignatureTensor.
func signatureCall() ([]*Tensor, error) {
	if handlers.Signature == nil {
		return nil, errors.New("entry point not implemented")
	}
	sig, err := handlers.Signature()
	if err != nil {
		return nil, err
	}
	js, err := sig.appendJSON(nil)
	if err != nil {
		return nil, err
	}
	return []*Tensor{Strings(abi.SignatureTensor, []int64{1}, [][]byte{js})}, nil
}

// appendJSON appends s in the form abi.SignatureTensor documents (by hand:
// encoding/json would make every guest larger and slower to start).
func (s Signature) appendJSON(b []byte) ([]byte, error) {
	b = append(b, '{')
	sep := false
	for _, side := range []struct {
		key  string
		list []TensorMeta
	}{{"inputs", s.Inputs}, {"outputs", s.Outputs}} {
		if side.list == nil {
			continue
		}
		if sep {
			b = append(b, ',')
		}
		sep = true
		b = append(b, '"')
		b = append(b, side.key...)
		b = append(b, `":[`...)
		// What the node refuses (guests/ABI.md) is the guest's own error
		// here, saying which tensor, not a bad output.
		if len(side.list) > abi.MaxSignatureTensors {
			return nil, fmt.Errorf("signature: %d %s, at most %d", len(side.list), side.key, abi.MaxSignatureTensors)
		}
		for i, t := range side.list {
			if err := abi.CheckSignatureName(t.Name); err != nil {
				return nil, fmt.Errorf("signature: %s %d: %w", side.key, i, err)
			}
			switch {
			case slices.ContainsFunc(side.list[:i], func(o TensorMeta) bool { return o.Name == t.Name }):
				return nil, fmt.Errorf("signature: %s: %q listed twice", side.key, t.Name)
			case t.DType < Bool || t.DType > Bytes:
				return nil, fmt.Errorf("signature: %s %q: datatype %v", side.key, t.Name, t.DType)
			}
			if err := abi.CheckSignatureShape(t.Shape); err != nil {
				return nil, fmt.Errorf("signature: %s %q: %w", side.key, t.Name, err)
			}
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"name":`...)
			b = appendJSONString(b, t.Name)
			b = append(b, `,"datatype":"`...)
			b = append(b, t.DType.String()...)
			b = append(b, `","shape":`...)
			if t.Shape == nil {
				b = append(b, "null}"...)
				continue
			}
			b = append(b, '[')
			for j, d := range t.Shape {
				if j > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendInt(b, d, 10)
			}
			b = append(b, "]}"...)
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// appendJSONString appends s (valid UTF-8) as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

func tensorsCall(fn func([]*Tensor) ([]*Tensor, error), in []*Tensor) ([]*Tensor, error) {
	if fn == nil {
		return nil, errors.New("entry point not implemented")
	}
	return fn(in)
}

// encodeList lists the outputs: by handle where t has a live one, inline
// otherwise.
func encodeList(out []*Tensor) ([]abi.Tensor, error) {
	list := make([]abi.Tensor, len(out))
	for i, t := range out {
		if t == nil {
			return nil, fmt.Errorf("output %d is a nil *sdk.Tensor", i)
		}
		t.info()
		h := t.ref.live()
		if h == 0 && !t.loaded {
			return nil, fmt.Errorf("output %d: %w", i, t.errStale("output"))
		}
		if h == 0 {
			// An inline output the host would refuse as a bad output,
			// throwing the instance away: the guest's error instead.
			if err := t.check(); err != nil {
				return nil, fmt.Errorf("output %d: %w", i, err)
			}
		}
		// What the list's framing carries (abi.Encode would cut the name,
		// and the host refuse the rank as a bad output).
		if len(t.name) > abi.MaxNameLen || len(t.shape) > abi.MaxRank {
			return nil, fmt.Errorf("output %d (%.64q): a name of %d bytes or a rank of %d, at most %d and %d",
				i, t.name, len(t.name), len(t.shape), abi.MaxNameLen, abi.MaxRank)
		}
		// Names are UTF-8 (ABI.md): the host refuses another as a bad
		// output and throws the instance away.
		if !utf8.ValidString(t.name) {
			return nil, fmt.Errorf("output %d: name %.64q is not UTF-8", i, t.name)
		}
		list[i] = abi.Tensor{Name: t.name, DType: uint8(t.dtype), Shape: t.shape, Handle: h, Data: t.data, Strings: t.strs}
	}
	return list, nil
}

// check reports a guest tensor whose elements do not match its dtype and
// shape (guests/ABI.md: fixed-width data is exactly product(dims) × width,
// BYTES one element per position).
func (t *Tensor) check() error {
	if t.err != nil {
		return t.err
	}
	if t.dtype < Bool || t.dtype > Bytes {
		return fmt.Errorf("tensor %q: datatype %v", t.name, t.dtype)
	}
	n := int64(1)
	for _, d := range t.shape {
		if d < 0 || d != 0 && n > math.MaxInt64/d {
			return fmt.Errorf("tensor %q: shape %v", t.name, t.shape)
		}
		n *= d
	}
	if t.dtype == Bytes {
		if int64(len(t.strs)) != n {
			return fmt.Errorf("tensor %q: shape %v needs %d BYTES elements, got %d", t.name, t.shape, n, len(t.strs))
		}
		return nil
	}
	if w := int64(t.dtype.Size()); n > math.MaxInt64/w || n*w != int64(len(t.data)) {
		return fmt.Errorf("tensor %q: shape %v of %v needs %d elements, got %d bytes", t.name, t.shape, t.dtype, n, len(t.data))
	}
	return nil
}

func scalar(in []*Tensor, name string) int64 {
	for _, t := range in {
		if t.Name() == name {
			if v, err := t.Int64(); err == nil && len(v) == 1 {
				return v[0]
			}
		}
	}
	return 0
}

func batchCall(in []*Tensor) ([]*Tensor, error) {
	if handlers.BatchPolicy == nil {
		return nil, errors.New("entry point not implemented")
	}
	q := QueueState{
		Queued:     int(scalar(in, "queued")),
		OldestWait: time.Duration(scalar(in, "oldest_wait_us")) * time.Microsecond,
		MaxBatch:   scalar(in, "max_batch"),
	}
	for _, t := range in {
		if t.Name() == "rows" {
			q.Rows, _ = t.Int64()
		}
	}
	d, err := handlers.BatchPolicy(q)
	if err != nil {
		return nil, err
	}
	// The host refuses a decision it cannot follow as a bad output and
	// throws the instance away: the guest's error instead.
	if d.Run < 0 || d.Run > q.Queued || d.Wait.Microseconds() < 0 {
		return nil, fmt.Errorf("batch policy: decision %+v: Run must be in [0, %d] (the queued requests) and Wait >= 0", d, q.Queued)
	}
	return []*Tensor{
		Int64s("run", []int64{}, []int64{int64(d.Run)}),
		Int64s("wait_us", []int64{}, []int64{d.Wait.Microseconds()}),
	}, nil
}

func loadCall(in []*Tensor) error {
	if handlers.FormatLoad == nil {
		return errors.New("entry point not implemented")
	}
	for _, t := range in {
		if t.Name() == "model" {
			s, err := t.Strings()
			if err != nil {
				return err
			}
			if len(s) != 1 {
				return fmt.Errorf("model tensor has %d elements, want 1", len(s))
			}
			return handlers.FormatLoad(s[0])
		}
	}
	return errors.New("no \"model\" input")
}
