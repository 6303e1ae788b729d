package server

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// The KServe v2 tensor encodings: raw little-endian bytes per tensor
// (raw_input_contents, BYTES as 4-byte length prefixes), or typed repeated
// fields (InferTensorContents). Every mismatch is an ErrInvalidInput that
// names the tensor.

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", loaders.ErrInvalidInput, fmt.Sprintf(format, args...))
}

// decodeInputs turns a ModelInferRequest's inputs into tensors.
func decodeInputs(req *inference.ModelInferRequest) ([]*tensor.Tensor, error) {
	raw := req.RawInputContents
	if len(raw) > 0 && len(raw) != len(req.Inputs) {
		return nil, invalid("raw_input_contents has %d entries for %d inputs: give one per input, in order", len(raw), len(req.Inputs))
	}
	out := make([]*tensor.Tensor, len(req.Inputs))
	for i, in := range req.Inputs {
		if err := unsupportedParams("input", in.Name, in.Parameters); err != nil {
			return nil, err
		}
		dt, err := tensor.ParseDType(in.Datatype)
		if err != nil {
			return nil, invalid("input %q: %v", in.Name, err)
		}
		n := tensor.NumElements(in.Shape)
		if n < 0 {
			return nil, invalid("input %q: shape %v has a negative or overflowing dimension", in.Name, in.Shape)
		}
		// No tensor with data that a gRPC message can carry has more
		// elements than this; an empty one ([2^40, 0]) must not claim more
		// rows or columns either: models and guests size work by them.
		if tensor.Span(in.Shape) > maxElements {
			return nil, invalid("input %q: shape %v spans more than %d elements", in.Name, in.Shape, maxElements)
		}
		t := &tensor.Tensor{Name: in.Name, DType: dt, Shape: in.Shape}
		if len(raw) > 0 {
			if in.Contents != nil {
				return nil, invalid("input %q: both raw_input_contents and contents are set: use one", in.Name)
			}
			if err := fromRaw(t, raw[i], n); err != nil {
				return nil, err
			}
		} else if err := fromContents(t, in.Contents, n); err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

// maxElements bounds the elements (and, for an empty tensor, the product of
// the non-zero dimensions) of one request tensor: gRPC messages are under
// 2 GiB, so no tensor with data can have more.
const maxElements = math.MaxInt32

func fromRaw(t *tensor.Tensor, b []byte, n int64) error {
	if t.DType != tensor.Bytes {
		if want := n * int64(t.DType.Size()); int64(len(b)) != want {
			return invalid("input %q: shape %v of %v needs %d raw bytes, got %d", t.Name, t.Shape, t.DType, want, len(b))
		}
		t.Data = b
		return nil
	}
	s, err := tensor.SplitStrings(b, n)
	if err != nil {
		return invalid("input %q (shape %v): %v", t.Name, t.Shape, err)
	}
	t.Strings = s
	return nil
}

func fromContents(t *tensor.Tensor, c *inference.InferTensorContents, n int64) error {
	count := func(got int) error {
		if int64(got) != n {
			return invalid("input %q: shape %v needs %d elements, contents hold %d", t.Name, t.Shape, n, got)
		}
		return nil
	}
	if c == nil {
		c = &inference.InferTensorContents{}
	}
	if t.DType == tensor.FP16 || t.DType == tensor.BF16 {
		// Said first, whatever field holds data: "takes
		// contents.raw_input_contents" named a field that does not exist.
		return invalid("input %q: %v has no typed contents field: send it in raw_input_contents", t.Name, t.DType)
	}
	// Each datatype reads exactly one field; data in another field is a
	// client mistake worth naming.
	fields, got := contentsFields(c)
	want := contentsFieldFor(t.DType)
	if len(fields) > 1 {
		return invalid("input %q: data in %v: datatype %v takes contents.%s only", t.Name, fields, t.DType, want)
	}
	if got > 0 && fields[0] != want {
		return invalid("input %q: datatype %v takes contents.%s, got data in contents.%s", t.Name, t.DType, want, fields[0])
	}
	switch t.DType {
	case tensor.Bool:
		if err := count(len(c.BoolContents)); err != nil {
			return err
		}
		t.Data = make([]byte, n)
		for i, v := range c.BoolContents {
			if v {
				t.Data[i] = 1
			}
		}
	case tensor.Int8, tensor.Int16, tensor.Int32:
		if err := count(len(c.IntContents)); err != nil {
			return err
		}
		t.Data = make([]byte, n*int64(t.DType.Size()))
		lo, hi := intRange(t.DType)
		for i, v := range c.IntContents {
			if int64(v) < lo || int64(v) > hi {
				return invalid("input %q: element %d = %d does not fit %v", t.Name, i, v, t.DType)
			}
			putInt(t.Data, i, t.DType.Size(), uint64(v))
		}
	case tensor.Int64:
		if err := count(len(c.Int64Contents)); err != nil {
			return err
		}
		t.Data = make([]byte, n*8)
		for i, v := range c.Int64Contents {
			binary.LittleEndian.PutUint64(t.Data[i*8:], uint64(v))
		}
	case tensor.Uint8, tensor.Uint16, tensor.Uint32:
		if err := count(len(c.UintContents)); err != nil {
			return err
		}
		t.Data = make([]byte, n*int64(t.DType.Size()))
		_, hi := intRange(t.DType)
		for i, v := range c.UintContents {
			if int64(v) > hi {
				return invalid("input %q: element %d = %d does not fit %v", t.Name, i, v, t.DType)
			}
			putInt(t.Data, i, t.DType.Size(), uint64(v))
		}
	case tensor.Uint64:
		if err := count(len(c.Uint64Contents)); err != nil {
			return err
		}
		t.Data = make([]byte, n*8)
		for i, v := range c.Uint64Contents {
			binary.LittleEndian.PutUint64(t.Data[i*8:], v)
		}
	case tensor.FP32:
		if err := count(len(c.Fp32Contents)); err != nil {
			return err
		}
		t.Data = make([]byte, n*4)
		for i, v := range c.Fp32Contents {
			binary.LittleEndian.PutUint32(t.Data[i*4:], math.Float32bits(v))
		}
	case tensor.FP64:
		if err := count(len(c.Fp64Contents)); err != nil {
			return err
		}
		t.Data = make([]byte, n*8)
		for i, v := range c.Fp64Contents {
			binary.LittleEndian.PutUint64(t.Data[i*8:], math.Float64bits(v))
		}
	case tensor.Bytes:
		if err := count(len(c.BytesContents)); err != nil {
			return err
		}
		t.Strings = c.BytesContents
	}
	return nil
}

// contentsFields names the populated fields of c, and the length of the
// first.
func contentsFields(c *inference.InferTensorContents) (names []string, n int) {
	for _, f := range []struct {
		name string
		n    int
	}{
		{"bool_contents", len(c.BoolContents)}, {"int_contents", len(c.IntContents)},
		{"int64_contents", len(c.Int64Contents)}, {"uint_contents", len(c.UintContents)},
		{"uint64_contents", len(c.Uint64Contents)}, {"fp32_contents", len(c.Fp32Contents)},
		{"fp64_contents", len(c.Fp64Contents)}, {"bytes_contents", len(c.BytesContents)},
	} {
		if f.n > 0 {
			if names == nil {
				n = f.n
			}
			names = append(names, f.name)
		}
	}
	return names, n
}

func contentsFieldFor(dt tensor.DType) string {
	switch dt {
	case tensor.Bool:
		return "bool_contents"
	case tensor.Int8, tensor.Int16, tensor.Int32:
		return "int_contents"
	case tensor.Int64:
		return "int64_contents"
	case tensor.Uint8, tensor.Uint16, tensor.Uint32:
		return "uint_contents"
	case tensor.Uint64:
		return "uint64_contents"
	case tensor.FP32:
		return "fp32_contents"
	case tensor.FP64:
		return "fp64_contents"
	case tensor.Bytes:
		return "bytes_contents"
	}
	return "raw_input_contents"
}

func intRange(dt tensor.DType) (lo, hi int64) {
	switch dt {
	case tensor.Int8:
		return math.MinInt8, math.MaxInt8
	case tensor.Int16:
		return math.MinInt16, math.MaxInt16
	case tensor.Int32:
		return math.MinInt32, math.MaxInt32
	case tensor.Uint8:
		return 0, math.MaxUint8
	case tensor.Uint16:
		return 0, math.MaxUint16
	case tensor.Uint32:
		return 0, math.MaxUint32
	}
	return math.MinInt64, math.MaxInt64
}

func putInt(b []byte, i, size int, v uint64) {
	switch size {
	case 1:
		b[i] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b[i*2:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b[i*4:], uint32(v))
	}
}

// encodeOutputs fills resp with the tensors, as raw contents or typed
// contents. Typed contents are used only when asked for and every output has
// a typed field (FP16/BF16 have none, and the protocol forbids mixing).
func encodeOutputs(resp *inference.ModelInferResponse, outs []*tensor.Tensor, typed bool) {
	for _, t := range outs {
		if t.DType == tensor.FP16 || t.DType == tensor.BF16 {
			typed = false
		}
	}
	resp.Outputs = make([]*inference.ModelInferResponse_InferOutputTensor, len(outs))
	if !typed {
		resp.RawOutputContents = make([][]byte, len(outs))
	}
	for i, t := range outs {
		o := &inference.ModelInferResponse_InferOutputTensor{Name: t.Name, Datatype: t.DType.String(), Shape: t.Shape}
		if typed {
			o.Contents = toContents(t)
		} else {
			resp.RawOutputContents[i] = toRaw(t)
		}
		resp.Outputs[i] = o
	}
}

func toRaw(t *tensor.Tensor) []byte {
	if t.DType != tensor.Bytes {
		return t.Data
	}
	return tensor.AppendStrings(make([]byte, 0, tensor.StringsSize(t.Strings)), t.Strings)
}

func toContents(t *tensor.Tensor) *inference.InferTensorContents {
	c := &inference.InferTensorContents{}
	switch t.DType {
	case tensor.Bool:
		for _, v := range t.Data {
			c.BoolContents = append(c.BoolContents, v != 0)
		}
	case tensor.Int8:
		for _, v := range tensor.View[int8](t) {
			c.IntContents = append(c.IntContents, int32(v))
		}
	case tensor.Int16:
		for _, v := range tensor.View[int16](t) {
			c.IntContents = append(c.IntContents, int32(v))
		}
	case tensor.Int32:
		c.IntContents = append(c.IntContents, tensor.View[int32](t)...)
	case tensor.Int64:
		c.Int64Contents = append(c.Int64Contents, tensor.View[int64](t)...)
	case tensor.Uint8:
		for _, v := range t.Data {
			c.UintContents = append(c.UintContents, uint32(v))
		}
	case tensor.Uint16:
		for _, v := range tensor.View[uint16](t) {
			c.UintContents = append(c.UintContents, uint32(v))
		}
	case tensor.Uint32:
		c.UintContents = append(c.UintContents, tensor.View[uint32](t)...)
	case tensor.Uint64:
		c.Uint64Contents = append(c.Uint64Contents, tensor.View[uint64](t)...)
	case tensor.FP32:
		c.Fp32Contents = append(c.Fp32Contents, tensor.View[float32](t)...)
	case tensor.FP64:
		c.Fp64Contents = append(c.Fp64Contents, tensor.View[float64](t)...)
	case tensor.Bytes:
		c.BytesContents = t.Strings
	}
	return c
}
