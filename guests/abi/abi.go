// Package abi is the cyxwiz guest ABI v1 shared by both of its sides: the
// names of the exports a guest provides and of the host functions it may
// import, the error numbers host functions return, and the binary codec of a
// tensor list that crosses the boundary.
//
// It depends on the standard library only, so it builds for the host
// (hostfuncs/cyxwiz, host/guest) and for GOOS=wasip1 GOARCH=wasm (guests/sdk).
// guests/ABI.md is the normative description; this package is its code.
//
// A tensor list is, little-endian throughout:
//
//	magic   [4]byte "CYXT"
//	version u8 (=1), reserved u8, u16 (=0)
//	count   u32
//	count × entry:
//	  name_len u16, name [name_len]byte (UTF-8)
//	  dtype u8 (KServe datatype number, see DType)
//	  kind  u8 (KindInline=0: data follows; KindHandle=1: a host tensor)
//	  rank  u8, reserved u8 (=0)
//	  dims  [rank]i64
//	  handle u32 (0 for inline)
//	  data_len u64
//	  data [data_len]byte (inline only; for BYTES a sequence of
//	       u32 length + bytes, one per element)
package abi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// Version is the ABI version: the value cyxwiz_abi_version must return.
const Version = 1

// Magic opens every encoded tensor list.
const Magic = "CYXT"

// Exports a guest provides. ExportVersion, ExportAlloc and the memory are
// required; each entry point is optional, and a guest may declare the ones
// it implements through ExportEntries.
const (
	ExportVersion = "cyxwiz_abi_version" // () -> i32, must return Version
	ExportAlloc   = "cyxwiz_alloc"       // (size i32) -> ptr i32, 0 on failure
	ExportEntries = "cyxwiz_entries"     // () -> i32 bit set of entry points, optional
	ExportMemory  = "memory"
	ExportInit    = "_initialize" // reactor initialiser (Go -buildmode=c-shared)
)

// Entry is one guest entry point. Each is exported as
// (ptr i32, len i32) -> i64: the input tensor list is at ptr/len, the result
// is (ptr<<32 | len) of the output tensor list, or, when negative,
// -(ptr<<32 | len) of a UTF-8 error message.
type Entry uint8

// The entry points of ABI v1.
const (
	Preprocess Entry = iota
	Postprocess
	BatchPolicy
	FormatLoad
	FormatInfer
	// Signature takes an empty list and returns the tensors the guest
	// takes and gives as one BYTES[1] tensor named SignatureTensor holding
	// a JSON object (see SignatureTensor). Optional; the node calls it once
	// per deployment, after FormatLoad for a FORMAT guest.
	Signature
	NumEntries
)

// SignatureTensor names the one tensor the Signature entry point returns.
// Its element is a UTF-8 JSON object in the form of KServe v2's model
// metadata:
//
//	{"inputs":  [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
//	 "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1, 1]}]}
//
// A key left out means "not declared"; -1 is a dimension of any size.
// A preprocess guest's inputs and a postprocess guest's outputs are what
// clients of the deployment see; a FORMAT guest declares both.
const SignatureTensor = "signature"

// Bounds on a signature: its JSON, the tensors of each side, and a name.
const (
	MaxSignatureBytes   = 64 << 10
	MaxSignatureTensors = 1024
	MaxSignatureName    = 1024
)

// CheckSignatureName checks one name of a signature: 1 to
// MaxSignatureName bytes of UTF-8 without C0 control characters or DEL.
func CheckSignatureName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > MaxSignatureName:
		return fmt.Errorf("a name of %d bytes, at most %d", len(name), MaxSignatureName)
	case !utf8.ValidString(name):
		return fmt.Errorf("name %.64q is not UTF-8", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("name %.64q has a control character", name)
		}
	}
	return nil
}

// CheckSignatureShape checks one shape of a signature: rank at most
// MaxRank, each dimension >= 0 or -1 (any size). A nil shape (any rank)
// passes.
func CheckSignatureShape(shape []int64) error {
	if len(shape) > MaxRank {
		return fmt.Errorf("rank %d, at most %d", len(shape), MaxRank)
	}
	for _, d := range shape {
		if d < -1 {
			return fmt.Errorf("shape %v (a dimension is >= 0, or -1 for any size)", shape)
		}
	}
	return nil
}

var entryNames = [NumEntries]string{"preprocess", "postprocess", "batch_policy", "format_load", "format_infer", "signature"}

// String is the export name of e.
func (e Entry) String() string {
	if e < NumEntries {
		return entryNames[e]
	}
	return fmt.Sprintf("Entry(%d)", e)
}

// Bit is e's bit in the cyxwiz_entries set.
func (e Entry) Bit() int32 { return 1 << e }

// Pack packs a pointer and a length into an entry point's i64 result.
func Pack(ptr, n uint32) int64 { return int64(ptr)<<32 | int64(n) }

// Unpack splits a non-negative entry point result.
func Unpack(v int64) (ptr, n uint32) { return uint32(uint64(v) >> 32), uint32(v) }

// ModuleName is the import module of the host functions.
const ModuleName = "cyxwiz"

// Host function names (import module ModuleName). Every one returns an i32:
// >= 0 on success (a handle, a length or 0), a negative Errno on failure.
const (
	FuncLog         = "log"          // (level, ptr, len)
	FuncConfigGet   = "config_get"   // (kptr, klen, outptr, outcap) -> value len
	FuncLastError   = "last_error"   // (outptr, outcap) -> message len
	FuncTensorNew   = "tensor_new"   // (nptr, nlen, dtype, shapeptr, rank, dptr, dlen) -> handle
	FuncTensorInfo  = "tensor_info"  // (h, outptr, outcap) -> len of a one-entry list
	FuncTensorRead  = "tensor_read"  // (h, outptr, outcap) -> data len
	FuncTensorName  = "tensor_name"  // (h, nptr, nlen) -> 0 (renames in place)
	FuncTensorFree  = "tensor_free"  // (h) -> 0
	FuncTensorPin   = "tensor_pin"   // (h) -> 0 (survives the call)
	FuncAffine      = "affine"       // (h, scale f32, bias f32) -> h
	FuncNormalize   = "normalize"    // (h, scale f32, meanptr, stdptr, n, axis) -> h
	FuncSoftmax     = "softmax"      // (h, axis) -> h
	FuncTopK        = "topk"         // (h, k, outptr) -> 0, writes values h, indices h
	FuncResize      = "resize"       // (h, height, width, layout) -> h
	FuncMatMul      = "matmul"       // (a, b) -> h
	FuncAdd         = "add"          // (a, b) -> h
	FuncRelu        = "relu"         // (h) -> h
	FuncTranspose   = "transpose"    // (h, permptr, n) -> h
	FuncCast        = "cast"         // (h, dtype) -> h
	FuncReshape     = "reshape"      // (h, shapeptr, rank) -> h
	FuncConcat      = "concat"       // (hsptr, n) -> h
	FuncImageDecode = "image_decode" // (h) -> h
	FuncInfer       = "infer"        // (mptr, mlen, hsptr, n, outptr, outcap) -> outputs
)

// Layouts of the resize host function.
const (
	LayoutNCHW = 0
	LayoutHWC  = 1
)

// Log levels of the log host function (slog's numbers).
const (
	LevelDebug = -4
	LevelInfo  = 0
	LevelWarn  = 4
	LevelError = 8
)

// Errno is a host function's negative result.
type Errno int32

// The host function errors.
const (
	EFAULT  Errno = -1 // a pointer/length outside guest memory
	EINVAL  Errno = -2 // a bad argument (dtype, shape, axis...)
	ENOENT  Errno = -3 // no such config key
	ENOMEM  Errno = -4 // a host limit (tensor bytes, handles) reached
	EBADF   Errno = -5 // no such tensor handle
	EIO     Errno = -6 // the operation failed (decode, infer): see last_error
	EPERM   Errno = -7 // not allowed (model not in the manifest)
	ENOCALL Errno = -8 // called outside an entry point call
)

var errnoNames = map[Errno]string{
	EFAULT: "EFAULT: bad guest pointer", EINVAL: "EINVAL: invalid argument",
	ENOENT: "ENOENT: not found", ENOMEM: "ENOMEM: host limit reached",
	EBADF: "EBADF: bad tensor handle", EIO: "EIO: operation failed",
	EPERM: "EPERM: not allowed", ENOCALL: "ENOCALL: no call in progress",
}

func (e Errno) Error() string {
	if s, ok := errnoNames[e]; ok {
		return s
	}
	return fmt.Sprintf("errno %d", int32(e))
}

// DType numbers are the KServe datatypes in the order of
// loaders/tensor.DType: 1 BOOL, 2 UINT8, 3 UINT16, 4 UINT32, 5 UINT64,
// 6 INT8, 7 INT16, 8 INT32, 9 INT64, 10 FP16, 11 BF16, 12 FP32, 13 FP64,
// 14 BYTES.
const (
	DTypeBool  = 1
	DTypeUint8 = 2
	DTypeInt32 = 8
	DTypeInt64 = 9
	DTypeFP32  = 12
	DTypeFP64  = 13
	DTypeBytes = 14
	maxDType   = 14
)

// Kinds of list entry.
const (
	KindInline = 0
	KindHandle = 1
)

// MaxRank is the largest rank the codec carries.
const MaxRank = 16

// MaxNameLen is the longest tensor name the codec carries (a 16-bit length).
const MaxNameLen = 1<<16 - 1

// Tensor is one list entry: either inline data (Handle == 0) or a reference
// to a host tensor (Handle != 0, Data and Strings nil; DataLen is the host
// tensor's data size, informative).
type Tensor struct {
	Name    string
	DType   uint8
	Shape   []int64
	Handle  uint32
	DataLen uint64
	Data    []byte   // fixed-width elements, little-endian
	Strings [][]byte // BYTES elements
}

// ErrCodec reports a malformed tensor list.
var ErrCodec = errors.New("malformed tensor list")

const headerLen = 12

// Encode appends the encoding of list to dst. Names longer than MaxNameLen
// and shapes of more than 255 dimensions cannot be framed: Encode cuts them
// there (a name at the last character boundary before; callers refuse such
// tensors first), so that the framing never disagrees with the bytes
// written.
func Encode(dst []byte, list []Tensor) []byte {
	dst = append(dst, Magic...)
	dst = append(dst, Version, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(list)))
	for i := range list {
		t := &list[i]
		name, shape := t.Name, t.Shape
		if len(name) > MaxNameLen {
			cut := MaxNameLen
			for cut > 0 && !utf8.RuneStart(name[cut]) {
				cut-- // between characters, so that the name stays UTF-8
			}
			name = name[:cut]
		}
		if len(shape) > 255 {
			shape = shape[:255]
		}
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(name)))
		dst = append(dst, name...)
		kind := byte(KindInline)
		if t.Handle != 0 {
			kind = KindHandle
		}
		dst = append(dst, t.DType, kind, byte(len(shape)), 0)
		for _, d := range shape {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(d))
		}
		dst = binary.LittleEndian.AppendUint32(dst, t.Handle)
		if t.Handle != 0 {
			dst = binary.LittleEndian.AppendUint64(dst, t.DataLen)
			continue
		}
		if t.DType == DTypeBytes {
			dst = binary.LittleEndian.AppendUint64(dst, StringsLen(t.Strings))
			dst = AppendStrings(dst, t.Strings)
		} else {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(len(t.Data)))
			dst = append(dst, t.Data...)
		}
	}
	return dst
}

// StringsLen is the encoded size of BYTES elements.
func StringsLen(s [][]byte) uint64 {
	n := uint64(4 * len(s))
	for _, e := range s {
		n += uint64(len(e))
	}
	return n
}

// AppendStrings appends BYTES elements as u32 length + bytes each.
func AppendStrings(dst []byte, s [][]byte) []byte {
	for _, e := range s {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(e)))
		dst = append(dst, e...)
	}
	return dst
}

// DecodeStrings splits encoded BYTES elements; the elements alias b. want
// is the element count, or -1 when unknown.
func DecodeStrings(b []byte, want int64) ([][]byte, error) {
	var out [][]byte
	if want >= 0 {
		if want > int64(len(b)/4) {
			return nil, fmt.Errorf("%w: %d BYTES elements cannot fit in %d bytes", ErrCodec, want, len(b))
		}
		out = make([][]byte, 0, want)
	}
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: truncated BYTES element length", ErrCodec)
		}
		n := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: BYTES element of %d bytes, %d left", ErrCodec, n, len(b))
		}
		out = append(out, b[:n:n])
		b = b[n:]
	}
	if want >= 0 && int64(len(out)) != want {
		return nil, fmt.Errorf("%w: %d BYTES elements, shape needs %d", ErrCodec, len(out), want)
	}
	return out, nil
}

// Decode parses a tensor list. Names must be UTF-8. Data and BYTES elements alias b, so
// the caller keeps b unchanged while it uses the result. Every length is
// checked against what is left of b; inline fixed-width data must match its
// shape (size is the element width of a dtype, 0 when unknown or BYTES).
func Decode(b []byte, size func(dtype uint8) int) ([]Tensor, error) {
	if len(b) < headerLen || string(b[:4]) != Magic {
		return nil, fmt.Errorf("%w: no %q header", ErrCodec, Magic)
	}
	if b[4] != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCodec, b[4], Version)
	}
	// Reserved fields are 0: a list is one encoding of its tensors, and a
	// later version's flags are not read as version 1's.
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, fmt.Errorf("%w: reserved header bytes % x, want 0", ErrCodec, b[5:8])
	}
	count := binary.LittleEndian.Uint32(b[8:])
	b = b[headerLen:]
	// Each entry takes at least 2+4+4+8 bytes: refuse counts that cannot fit
	// before allocating.
	if uint64(count) > uint64(len(b)/18) {
		return nil, fmt.Errorf("%w: %d entries cannot fit in %d bytes", ErrCodec, count, len(b))
	}
	out := make([]Tensor, count)
	for i := range out {
		t := &out[i]
		if len(b) < 2 {
			return nil, fmt.Errorf("%w: entry %d: truncated", ErrCodec, i)
		}
		nl := int(binary.LittleEndian.Uint16(b))
		b = b[2:]
		if len(b) < nl+4 {
			return nil, fmt.Errorf("%w: entry %d: truncated name", ErrCodec, i)
		}
		if !utf8.Valid(b[:nl]) {
			// A name is UTF-8 (ABI.md): one that is not would reach a
			// KServe response, whose strings protobuf refuses to marshal.
			return nil, fmt.Errorf("%w: entry %d: name %q is not UTF-8", ErrCodec, i, b[:min(nl, 64)])
		}
		t.Name = string(b[:nl])
		b = b[nl:]
		t.DType = b[0]
		kind, rank, reserved := b[1], int(b[2]), b[3]
		b = b[4:]
		if t.DType == 0 || t.DType > maxDType {
			return nil, fmt.Errorf("%w: entry %d (%q): dtype %d", ErrCodec, i, t.Name, t.DType)
		}
		if kind > KindHandle || rank > MaxRank || reserved != 0 {
			return nil, fmt.Errorf("%w: entry %d (%q): kind %d rank %d reserved %d", ErrCodec, i, t.Name, kind, rank, reserved)
		}
		if len(b) < rank*8+12 {
			return nil, fmt.Errorf("%w: entry %d (%q): truncated shape", ErrCodec, i, t.Name)
		}
		t.Shape = make([]int64, rank)
		elems := int64(1)
		for k := range t.Shape {
			d := int64(binary.LittleEndian.Uint64(b[8*k:]))
			if d < 0 || (d != 0 && elems > math.MaxInt64/d) {
				return nil, fmt.Errorf("%w: entry %d (%q): bad dimension %d", ErrCodec, i, t.Name, d)
			}
			elems *= d
			t.Shape[k] = d
		}
		b = b[rank*8:]
		t.Handle = binary.LittleEndian.Uint32(b)
		t.DataLen = binary.LittleEndian.Uint64(b[4:])
		b = b[12:]
		if kind == KindHandle {
			if t.Handle == 0 {
				return nil, fmt.Errorf("%w: entry %d (%q): handle 0", ErrCodec, i, t.Name)
			}
			continue
		}
		if t.Handle != 0 {
			return nil, fmt.Errorf("%w: entry %d (%q): inline entry with a handle", ErrCodec, i, t.Name)
		}
		if t.DataLen > uint64(len(b)) {
			return nil, fmt.Errorf("%w: entry %d (%q): %d data bytes, %d left", ErrCodec, i, t.Name, t.DataLen, len(b))
		}
		data := b[:t.DataLen:t.DataLen]
		b = b[t.DataLen:]
		if t.DType == DTypeBytes {
			s, err := DecodeStrings(data, elems)
			if err != nil {
				return nil, fmt.Errorf("entry %d (%q): %w", i, t.Name, err)
			}
			t.Strings = s
			continue
		}
		if size != nil {
			if w := size(t.DType); w > 0 && (elems > math.MaxInt64/int64(w) || uint64(elems*int64(w)) != t.DataLen) {
				return nil, fmt.Errorf("%w: entry %d (%q): shape %v needs %d elements, got %d bytes", ErrCodec, i, t.Name, t.Shape, elems, t.DataLen)
			}
		}
		t.Data = data
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCodec, len(b))
	}
	return out, nil
}

var sizes = [maxDType + 1]int{0, 1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 2, 4, 8, 0}

// Size is the width in bytes of one element of dtype (0 for BYTES or an
// unknown number).
func Size(dtype uint8) int {
	if int(dtype) < len(sizes) {
		return sizes[dtype]
	}
	return 0
}
