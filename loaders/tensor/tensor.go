// Package tensor is the node's in-memory tensor: a data type that maps one to
// one onto the KServe v2 / Open Inference Protocol datatypes, a shape, and the
// elements stored as little-endian bytes so that they pass between gRPC
// (raw_input_contents), native runtimes and WebAssembly guests without
// conversion.
package tensor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"
)

// DType is an element type. Its String form is the KServe v2 datatype name.
type DType uint8

// The KServe v2 datatypes. Invalid is the zero value.
const (
	Invalid DType = iota
	Bool
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

var dtypeNames = [...]string{
	Invalid: "INVALID",
	Bool:    "BOOL",
	Uint8:   "UINT8",
	Uint16:  "UINT16",
	Uint32:  "UINT32",
	Uint64:  "UINT64",
	Int8:    "INT8",
	Int16:   "INT16",
	Int32:   "INT32",
	Int64:   "INT64",
	FP16:    "FP16",
	BF16:    "BF16",
	FP32:    "FP32",
	FP64:    "FP64",
	Bytes:   "BYTES",
}

var dtypeSizes = [...]int{
	Bool: 1, Uint8: 1, Uint16: 2, Uint32: 4, Uint64: 8,
	Int8: 1, Int16: 2, Int32: 4, Int64: 8,
	FP16: 2, BF16: 2, FP32: 4, FP64: 8, Bytes: 0,
}

// DTypes lists every valid data type, in declaration order.
func DTypes() []DType {
	out := make([]DType, 0, len(dtypeNames)-1)
	for d := Bool; d <= Bytes; d++ {
		out = append(out, d)
	}
	return out
}

// String returns the KServe v2 datatype name ("FP32", "BYTES", ...).
func (d DType) String() string {
	if int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return fmt.Sprintf("DType(%d)", d)
}

// Size is the width of one element in bytes; 0 for BYTES (variable) and Invalid.
func (d DType) Size() int {
	if int(d) < len(dtypeSizes) {
		return dtypeSizes[d]
	}
	return 0
}

// Valid reports whether d is one of the KServe datatypes.
func (d DType) Valid() bool { return d >= Bool && d <= Bytes }

// ParseDType maps a KServe datatype name to a DType.
func ParseDType(s string) (DType, error) {
	for d := Bool; d <= Bytes; d++ {
		if dtypeNames[d] == s {
			return d, nil
		}
	}
	return Invalid, fmt.Errorf("unknown datatype %q (want one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES)", s)
}

// ErrShape reports a tensor whose data does not match its shape and type.
var ErrShape = errors.New("tensor data does not match shape")

// Tensor is a named, typed, shaped block of elements. Fixed-width types keep
// their elements in Data (little-endian, row-major); BYTES keeps one []byte per
// element in Strings and leaves Data nil.
type Tensor struct {
	Name    string
	DType   DType
	Shape   []int64
	Data    []byte
	Strings [][]byte
}

// NumElements is the product of the shape's dimensions (1 for a scalar). It
// returns -1 if a dimension is negative or the product overflows. A shape
// with a zero dimension holds 0 elements wherever the zero stands, even
// when the dimensions before it multiply past an int64 ([2^62, 4, 0] is 0,
// as [0, 2^62, 4] is; Span bounds such shapes).
func NumElements(shape []int64) int64 {
	empty := false
	for _, d := range shape {
		if d < 0 {
			return -1
		}
		empty = empty || d == 0
	}
	if empty {
		return 0
	}
	n := int64(1)
	for _, d := range shape {
		if n > math.MaxInt64/d {
			return -1
		}
		n *= d
	}
	return n
}

// Span is the product of shape's non-zero dimensions, saturating at
// MaxInt64: the number of rows and columns a loop over the tensor visits,
// also when it is empty ([2^62, 0] holds nothing but has 2^62 rows). For a
// tensor with elements it is their number.
func Span(shape []int64) int64 {
	p := int64(1)
	for _, d := range shape {
		if d <= 0 {
			continue
		}
		if p > math.MaxInt64/d {
			return math.MaxInt64
		}
		p *= d
	}
	return p
}

// Len is the number of elements the shape describes.
func (t *Tensor) Len() int64 { return NumElements(t.Shape) }

// Validate checks that the type is valid and the data holds exactly the
// number of elements the shape describes.
func (t *Tensor) Validate() error {
	if !t.DType.Valid() {
		return fmt.Errorf("tensor %q: invalid datatype %v", t.Name, t.DType)
	}
	n := t.Len()
	if n < 0 {
		return fmt.Errorf("tensor %q: shape %v: %w", t.Name, t.Shape, ErrShape)
	}
	if t.DType == Bytes {
		if int64(len(t.Strings)) != n {
			return fmt.Errorf("tensor %q: shape %v needs %d BYTES elements, got %d: %w", t.Name, t.Shape, n, len(t.Strings), ErrShape)
		}
		return nil
	}
	size := int64(t.DType.Size())
	if n > math.MaxInt64/size {
		return fmt.Errorf("tensor %q: shape %v of %v: more bytes than an int64 counts: %w", t.Name, t.Shape, t.DType, ErrShape)
	}
	want := n * size
	if int64(len(t.Data)) != want {
		return fmt.Errorf("tensor %q: shape %v of %v needs %d bytes, got %d: %w", t.Name, t.Shape, t.DType, want, len(t.Data), ErrShape)
	}
	return nil
}

// New returns a zero-filled tensor of the given type and shape.
func New(name string, dt DType, shape ...int64) *Tensor {
	t := &Tensor{Name: name, DType: dt, Shape: append([]int64(nil), shape...)}
	n := NumElements(shape)
	if n < 0 || (dt.Size() > 0 && n > math.MaxInt64/int64(dt.Size())) {
		n = 0 // an impossible shape: the tensor is left empty, and Validate refuses it
	}
	if dt == Bytes {
		t.Strings = make([][]byte, n)
	} else {
		t.Data = make([]byte, n*int64(dt.Size()))
	}
	return t
}

// Element is the set of Go types whose in-memory form is a tensor element.
type Element interface {
	~bool | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~int8 | ~int16 | ~int32 | ~int64 | ~float32 | ~float64
}

// hostLittleEndian is true on every platform the node builds for; View and
// FromSlice rely on it to share memory instead of copying.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// View reinterprets a fixed-width tensor's data as a []E without copying. The
// caller chooses E to match DType (float32 for FP32, uint16 for FP16/BF16...);
// View panics if the element width differs, which is a programming error.
func View[E Element](t *Tensor) []E {
	var zero E
	size := int(unsafe.Sizeof(zero))
	if size != t.DType.Size() || !hostLittleEndian {
		panic(fmt.Sprintf("tensor.View: %T does not match %v", zero, t.DType))
	}
	if len(t.Data) == 0 {
		return nil
	}
	return unsafe.Slice((*E)(unsafe.Pointer(unsafe.SliceData(t.Data))), len(t.Data)/size)
}

// FromSlice builds a tensor of type dt that copies the elements of v.
func FromSlice[E Element](name string, dt DType, shape []int64, v []E) *Tensor {
	t := New(name, dt, shape...)
	copy(View[E](t), v)
	return t
}

// Clone returns a deep copy of t.
func (t *Tensor) Clone() *Tensor {
	c := &Tensor{Name: t.Name, DType: t.DType, Shape: append([]int64(nil), t.Shape...)}
	if t.Data != nil {
		c.Data = append([]byte(nil), t.Data...)
	}
	if t.Strings != nil {
		c.Strings = make([][]byte, len(t.Strings))
		for i, s := range t.Strings {
			c.Strings[i] = append([]byte(nil), s...)
		}
	}
	return c
}

// ByteSize is the memory the elements take.
func (t *Tensor) ByteSize() int64 {
	if t.DType != Bytes {
		return int64(len(t.Data))
	}
	var n int64
	for _, s := range t.Strings {
		n += int64(len(s))
	}
	return n
}
