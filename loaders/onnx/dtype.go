package onnx

import (
	"unsafe"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	ort "github.com/yalue/onnxruntime_go"
)

// ortTypes maps each KServe datatype to its ONNX element type, one to one.
var ortTypes = [...]ort.TensorElementDataType{
	tensor.Bool:   ort.TensorElementDataTypeBool,
	tensor.Uint8:  ort.TensorElementDataTypeUint8,
	tensor.Uint16: ort.TensorElementDataTypeUint16,
	tensor.Uint32: ort.TensorElementDataTypeUint32,
	tensor.Uint64: ort.TensorElementDataTypeUint64,
	tensor.Int8:   ort.TensorElementDataTypeInt8,
	tensor.Int16:  ort.TensorElementDataTypeInt16,
	tensor.Int32:  ort.TensorElementDataTypeInt32,
	tensor.Int64:  ort.TensorElementDataTypeInt64,
	tensor.FP16:   ort.TensorElementDataTypeFloat16,
	tensor.BF16:   ort.TensorElementDataTypeBFloat16,
	tensor.FP32:   ort.TensorElementDataTypeFloat,
	tensor.FP64:   ort.TensorElementDataTypeDouble,
	tensor.Bytes:  ort.TensorElementDataTypeString,
}

// dtypeOf maps an ONNX element type to its KServe datatype. It reports false
// for the ONNX types KServe has no datatype for (complex, float8, int4...).
func dtypeOf(t ort.TensorElementDataType) (tensor.DType, bool) {
	for d := tensor.Bool; d <= tensor.Bytes; d++ {
		if ortTypes[d] == t {
			return d, true
		}
	}
	return tensor.Invalid, false
}

// codec handles the fixed-width datatypes on the paths where
// onnxruntime_go's byte-backed CustomDataTensor cannot be used: rank-0
// tensors (Shape.Validate refuses an empty shape) and tensors with no
// elements (NewCustomDataTensor refuses an empty buffer), plus the typed
// values ORT-allocated outputs come back as.
type codec struct {
	// value makes a rank-0 (len(shape) == 0) or empty tensor of data.
	value func(shape []int64, data []byte) (ort.Value, error)
	// bytes returns the elements of an *ort.Tensor[T] or *ort.Scalar[T] as
	// little-endian bytes; false if v is neither.
	bytes func(v ort.Value) ([]byte, bool)
}

// codecs is indexed by tensor.DType. FP16, BF16 and BYTES have no Go
// element type in onnxruntime_go, so their entries are zero.
var codecs = [...]codec{
	tensor.Bool:   codecOf[bool](),
	tensor.Uint8:  codecOf[uint8](),
	tensor.Uint16: codecOf[uint16](),
	tensor.Uint32: codecOf[uint32](),
	tensor.Uint64: codecOf[uint64](),
	tensor.Int8:   codecOf[int8](),
	tensor.Int16:  codecOf[int16](),
	tensor.Int32:  codecOf[int32](),
	tensor.Int64:  codecOf[int64](),
	tensor.FP16:   {},
	tensor.BF16:   {},
	tensor.FP32:   codecOf[float32](),
	tensor.FP64:   codecOf[float64](),
	tensor.Bytes:  {},
}

func codecOf[T ort.TensorData]() codec {
	return codec{value: scalarOrEmpty[T], bytes: typedBytes[T]}
}

func scalarOrEmpty[T ort.TensorData](shape []int64, data []byte) (ort.Value, error) {
	if len(shape) == 0 {
		// Copy into an aligned T: data may sit at any offset of a request buffer.
		var x T
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&x)), unsafe.Sizeof(x)), data)
		s, err := ort.NewScalar(x)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	v, err := ort.NewTensor(ort.Shape(shape), []T{})
	if err != nil {
		return nil, err
	}
	return v, nil
}

func typedBytes[T ort.TensorData](v ort.Value) ([]byte, bool) {
	switch x := v.(type) {
	case *ort.Tensor[T]:
		// onnxruntime_go copies every ORT-allocated output into a fresh Go
		// slice (createTensorWithCData), so the bytes stay valid after the
		// value is destroyed and can be handed out without another copy.
		return asBytes(x.GetData()), true
	case *ort.Scalar[T]:
		return asBytes([]T{x.GetData()}), true
	}
	return nil, false
}

// asBytes views s as bytes without copying.
func asBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(s[0])))
}
