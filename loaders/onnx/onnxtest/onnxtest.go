// Package onnxtest generates tiny, valid ONNX model files for tests.
//
// The models are produced by hand-encoding the ONNX protobuf messages
// (ModelProto, GraphProto, NodeProto, TensorProto, ValueInfoProto and
// TypeProto) with protowire, so no ONNX bindings or Python tooling are
// needed. Every model targets IR version 8 and the default ("ai.onnx")
// operator set, version 17.
//
// Shapes use -1 for a dynamic dimension; it is encoded as a symbolic
// dim_param ("batch" for the first dimension, "d<i>" for dimension i
// otherwise).
package onnxtest

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protowire"
)

const (
	irVersion    = 8
	opsetVersion = 17
	producerName = "cyxwiz-onnxtest"
)

// ElemType is an ONNX tensor element type; its values are the
// TensorProto.DataType numbers.
type ElemType int32

// ONNX tensor element types (TensorProto.DataType).
const (
	Float    ElemType = 1
	Uint8    ElemType = 2
	Int8     ElemType = 3
	Uint16   ElemType = 4
	Int16    ElemType = 5
	Int32    ElemType = 6
	Int64    ElemType = 7
	String   ElemType = 8
	Bool     ElemType = 9
	Float16  ElemType = 10
	Double   ElemType = 11
	Uint32   ElemType = 12
	Uint64   ElemType = 13
	Bfloat16 ElemType = 16
)

// elemTypes lists every ElemType that WriteAll emits an Identity model for.
var elemTypes = []ElemType{
	Float, Uint8, Int8, Uint16, Int16, Int32, Int64,
	String, Bool, Float16, Double, Uint32, Uint64, Bfloat16,
}

var elemTypeNames = map[ElemType]string{
	Float: "float", Uint8: "uint8", Int8: "int8", Uint16: "uint16",
	Int16: "int16", Int32: "int32", Int64: "int64", String: "string",
	Bool: "bool", Float16: "float16", Double: "double", Uint32: "uint32",
	Uint64: "uint64", Bfloat16: "bfloat16",
}

// String returns the lower-case ONNX name of t (e.g. "float16"), or
// "elemtype(<n>)" for a value without a constant in this package.
func (t ElemType) String() string {
	if s, ok := elemTypeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("elemtype(%d)", int32(t))
}

// Linear returns a model computing Y = MatMul(X, W) + B.
//
// W is K×N and B has length N; both are stored as float32 initializers.
// The input "X" is float32 [-1, K] and the output "Y" is float32 [-1, N].
// Linear panics if W is empty or ragged, or if len(b) != N.
func Linear(w [][]float32, b []float32) []byte {
	if len(w) == 0 || len(w[0]) == 0 {
		panic("onnxtest: Linear needs a non-empty W")
	}
	k, n := len(w), len(w[0])
	if len(b) != n {
		panic(fmt.Sprintf("onnxtest: Linear: len(B) = %d, want %d", len(b), n))
	}
	var wRaw []byte
	for _, row := range w {
		if len(row) != n {
			panic("onnxtest: Linear: ragged W")
		}
		wRaw = appendFloat32s(wRaw, row)
	}
	return model("linear",
		[][]byte{
			node("MatMul", []string{"X", "W"}, "XW"),
			node("Add", []string{"XW", "B"}, "Y"),
		},
		[][]byte{
			tensor("W", Float, []int64{int64(k), int64(n)}, wRaw),
			tensor("B", Float, []int64{int64(n)}, appendFloat32s(nil, b)),
		},
		[][]byte{valueInfo("X", Float, []int64{-1, int64(k)})},
		[][]byte{valueInfo("Y", Float, []int64{-1, int64(n)})},
	)
}

// MultiIO returns a model with two float32 [-1, 4] inputs "A" and "B" and
// two float32 [-1, 4] outputs, "sum" = A + B and "prod" = A * B.
func MultiIO() []byte {
	shape := []int64{-1, 4}
	return model("multi_io",
		[][]byte{
			node("Add", []string{"A", "B"}, "sum"),
			node("Mul", []string{"A", "B"}, "prod"),
		},
		nil,
		[][]byte{valueInfo("A", Float, shape), valueInfo("B", Float, shape)},
		[][]byte{valueInfo("sum", Float, shape), valueInfo("prod", Float, shape)},
	)
}

// Int64Model returns a model computing out = ids * 2 + 1, where the input
// "ids" and the output "out" are int64 [-1, 3] and the constants 2 and 1
// are int64 scalar initializers.
func Int64Model() []byte {
	shape := []int64{-1, 3}
	return model("int64",
		[][]byte{
			node("Mul", []string{"ids", "two"}, "doubled"),
			node("Add", []string{"doubled", "one"}, "out"),
		},
		[][]byte{
			tensor("two", Int64, nil, binary.LittleEndian.AppendUint64(nil, 2)),
			tensor("one", Int64, nil, binary.LittleEndian.AppendUint64(nil, 1)),
		},
		[][]byte{valueInfo("ids", Int64, shape)},
		[][]byte{valueInfo("out", Int64, shape)},
	)
}

// Identity returns a model with a single Identity node mapping input "x" to
// output "y", both of element type dtype and the given shape (-1 marks a
// dynamic dimension).
func Identity(dtype ElemType, shape []int64) []byte {
	return model("identity_"+dtype.String(),
		[][]byte{node("Identity", []string{"x"}, "y")},
		nil,
		[][]byte{valueInfo("x", dtype, shape)},
		[][]byte{valueInfo("y", dtype, shape)},
	)
}

// Cast returns a model with a single Cast node converting input "x" of
// element type from to output "y" of element type to, both of the given
// shape (-1 marks a dynamic dimension).
func Cast(from, to ElemType, shape []int64) []byte {
	return model("cast_"+from.String()+"_"+to.String(),
		[][]byte{node("Cast", []string{"x"}, "y", attrInt("to", int64(to)))},
		nil,
		[][]byte{valueInfo("x", from, shape)},
		[][]byte{valueInfo("y", to, shape)},
	)
}

// InputAsOutput returns a model whose graph input "x" is also its second
// graph output, next to "y" = Identity(x): an output that aliases an input,
// as a model with a pass-through value has. Both are of element type dtype
// and the given shape.
func InputAsOutput(dtype ElemType, shape []int64) []byte {
	return model("input_as_output_"+dtype.String(),
		[][]byte{node("Identity", []string{"x"}, "y")},
		nil,
		[][]byte{valueInfo("x", dtype, shape)},
		[][]byte{valueInfo("y", dtype, shape), valueInfo("x", dtype, shape)},
	)
}

// ExternalData returns a model whose output "y" UINT8 [n] is an
// initializer kept in another file (ONNX external data): the first n bytes
// of location, a path relative to the model's directory. Its input "x"
// FP32 [1] is not used.
func ExternalData(location string, n int64) []byte {
	var w []byte
	w = appendVarint(w, 1, uint64(n))     // TensorProto.dims
	w = appendVarint(w, 2, uint64(Uint8)) // TensorProto.data_type
	w = appendString(w, 8, "w")           // TensorProto.name
	for _, kv := range [][2]string{{"location", location}, {"offset", "0"}, {"length", fmt.Sprint(n)}} {
		var e []byte
		e = appendString(e, 1, kv[0]) // StringStringEntryProto.key
		e = appendString(e, 2, kv[1]) // StringStringEntryProto.value
		w = appendMessage(w, 13, e)   // TensorProto.external_data
	}
	w = appendVarint(w, 14, 1) // TensorProto.data_location = EXTERNAL
	return model("external_data",
		[][]byte{node("Identity", []string{"w"}, "y")},
		[][]byte{w},
		[][]byte{valueInfo("x", Float, []int64{1})},
		[][]byte{valueInfo("y", Uint8, []int64{n})},
	)
}

// linearW and linearB are the parameters of linear.onnx written by WriteAll.
var (
	linearW = [][]float32{{1, 2}, {3, 4}, {5, 6}}
	linearB = []float32{0.5, -1}
)

// WriteAll writes the standard test models into dir, which must exist:
//
//   - linear.onnx: Linear(W, B) with W = [[1, 2], [3, 4], [5, 6]] (3×2) and
//     B = [0.5, -1], so X [-1, 3] maps to Y [-1, 2];
//     e.g. X = [[1, 1, 1]] gives Y = [[9.5, 11]].
//   - multi_io.onnx: MultiIO().
//   - int64.onnx: Int64Model().
//   - identity_<type>.onnx: Identity(type, [-1, 4]) for every ElemType
//     constant, where <type> is ElemType.String (e.g. identity_float16.onnx).
func WriteAll(dir string) error {
	files := map[string][]byte{
		"linear.onnx":   Linear(linearW, linearB),
		"multi_io.onnx": MultiIO(),
		"int64.onnx":    Int64Model(),
	}
	for _, t := range elemTypes {
		files["identity_"+t.String()+".onnx"] = Identity(t, []int64{-1, 4})
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("onnxtest: %w", err)
		}
	}
	return nil
}

// model encodes a ModelProto whose GraphProto holds the given encoded
// nodes, initializers, inputs and outputs.
func model(name string, nodes, inits, inputs, outputs [][]byte) []byte {
	var g []byte
	for _, n := range nodes {
		g = appendMessage(g, 1, n) // GraphProto.node
	}
	g = appendString(g, 2, name) // GraphProto.name
	for _, t := range inits {
		g = appendMessage(g, 5, t) // GraphProto.initializer
	}
	for _, v := range inputs {
		g = appendMessage(g, 11, v) // GraphProto.input
	}
	for _, v := range outputs {
		g = appendMessage(g, 12, v) // GraphProto.output
	}

	var opset []byte
	opset = appendString(opset, 1, "")           // OperatorSetIdProto.domain
	opset = appendVarint(opset, 2, opsetVersion) // OperatorSetIdProto.version

	var m []byte
	m = appendVarint(m, 1, irVersion)    // ModelProto.ir_version
	m = appendString(m, 2, producerName) // ModelProto.producer_name
	m = appendMessage(m, 7, g)           // ModelProto.graph
	m = appendMessage(m, 8, opset)       // ModelProto.opset_import
	return m
}

// node encodes a NodeProto of the default domain with a single output and
// the given encoded attributes.
func node(op string, inputs []string, output string, attrs ...[]byte) []byte {
	var b []byte
	for _, in := range inputs {
		b = appendString(b, 1, in) // NodeProto.input
	}
	b = appendString(b, 2, output) // NodeProto.output
	b = appendString(b, 3, output) // NodeProto.name
	b = appendString(b, 4, op)     // NodeProto.op_type
	for _, a := range attrs {
		b = appendMessage(b, 5, a) // NodeProto.attribute
	}
	return b
}

// attrInt encodes an AttributeProto of type INT.
func attrInt(name string, v int64) []byte {
	var b []byte
	b = appendString(b, 1, name)      // AttributeProto.name
	b = appendVarint(b, 3, uint64(v)) // AttributeProto.i
	b = appendVarint(b, 20, 2)        // AttributeProto.type = INT
	return b
}

// tensor encodes a TensorProto holding raw little-endian data; nil dims
// make a scalar.
func tensor(name string, dtype ElemType, dims []int64, raw []byte) []byte {
	var b []byte
	for _, d := range dims {
		b = appendVarint(b, 1, uint64(d)) // TensorProto.dims
	}
	b = appendVarint(b, 2, uint64(dtype)) // TensorProto.data_type
	b = appendString(b, 8, name)          // TensorProto.name
	b = appendMessage(b, 9, raw)          // TensorProto.raw_data
	return b
}

// valueInfo encodes a ValueInfoProto describing a tensor.
func valueInfo(name string, dtype ElemType, shape []int64) []byte {
	var sh []byte
	for i, d := range shape {
		var dim []byte
		switch {
		case d >= 0:
			dim = appendVarint(dim, 1, uint64(d)) // Dimension.dim_value
		case i == 0:
			dim = appendString(dim, 2, "batch") // Dimension.dim_param
		default:
			dim = appendString(dim, 2, fmt.Sprintf("d%d", i))
		}
		sh = appendMessage(sh, 1, dim) // TensorShapeProto.dim
	}
	var tt []byte
	tt = appendVarint(tt, 1, uint64(dtype)) // TypeProto.Tensor.elem_type
	tt = appendMessage(tt, 2, sh)           // TypeProto.Tensor.shape

	var b []byte
	b = appendString(b, 1, name)                       // ValueInfoProto.name
	b = appendMessage(b, 2, appendMessage(nil, 1, tt)) // ValueInfoProto.type{tensor_type}
	return b
}

func appendFloat32s(b []byte, vs []float32) []byte {
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendMessage appends a length-delimited field (a sub-message or bytes).
func appendMessage(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}
