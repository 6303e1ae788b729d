package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// outputTensors decodes a response's outputs (raw or typed).
func outputTensors(resp *inference.ModelInferResponse) ([]*tensor.Tensor, error) {
	out := make([]*tensor.Tensor, len(resp.Outputs))
	for i, o := range resp.Outputs {
		dt, err := tensor.ParseDType(o.Datatype)
		if err != nil {
			return nil, fmt.Errorf("output %s: %w", o.Name, err)
		}
		var t *tensor.Tensor
		switch {
		case i < len(resp.RawOutputContents):
			t, err = fromRaw(o, dt, resp.RawOutputContents[i])
		case o.Contents != nil:
			t, err = fromContents(o, dt)
		default:
			t = &tensor.Tensor{Name: o.Name, DType: dt, Shape: o.Shape}
		}
		if err != nil {
			return nil, err
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("bad output: %w", err)
		}
		out[i] = t
	}
	return out, nil
}

// fromRaw decodes an output sent in raw_output_contents.
func fromRaw(o *inference.ModelInferResponse_InferOutputTensor, dt tensor.DType, raw []byte) (*tensor.Tensor, error) {
	t := &tensor.Tensor{Name: o.Name, DType: dt, Shape: o.Shape}
	if dt != tensor.Bytes {
		t.Data = raw
		return t, nil
	}
	s, err := tensor.SplitStrings(raw, -1)
	if err != nil {
		return nil, fmt.Errorf("output %s: %w", o.Name, err)
	}
	t.Strings = s
	return t, nil
}

// fromContents decodes an output sent in typed contents, reading the field
// its datatype uses with that field's own Go type (an INT64 stays exact).
func fromContents(o *inference.ModelInferResponse_InferOutputTensor, dt tensor.DType) (*tensor.Tensor, error) {
	c := o.Contents
	switch dt {
	case tensor.Bool:
		return typed(o, dt, c.BoolContents)
	case tensor.Int8:
		return narrowed[int8](o, dt, c.IntContents)
	case tensor.Int16:
		return narrowed[int16](o, dt, c.IntContents)
	case tensor.Int32:
		return typed(o, dt, c.IntContents)
	case tensor.Int64:
		return typed(o, dt, c.Int64Contents)
	case tensor.Uint8:
		return narrowed[uint8](o, dt, c.UintContents)
	case tensor.Uint16:
		return narrowed[uint16](o, dt, c.UintContents)
	case tensor.Uint32:
		return typed(o, dt, c.UintContents)
	case tensor.Uint64:
		return typed(o, dt, c.Uint64Contents)
	case tensor.FP32:
		return typed(o, dt, c.Fp32Contents)
	case tensor.FP64:
		return typed(o, dt, c.Fp64Contents)
	case tensor.Bytes:
		if err := countContents(o, len(c.BytesContents)); err != nil {
			return nil, err
		}
		return &tensor.Tensor{Name: o.Name, DType: dt, Shape: o.Shape, Strings: c.BytesContents}, nil
	}
	return nil, fmt.Errorf("output %s: %v has no typed contents field", o.Name, dt)
}

// countContents checks that typed contents hold as many elements as the
// output's shape.
func countContents(o *inference.ModelInferResponse_InferOutputTensor, n int) error {
	if want := tensor.NumElements(o.Shape); want != int64(n) {
		return fmt.Errorf("output %s: shape %v needs %d elements, contents hold %d", o.Name, o.Shape, want, n)
	}
	return nil
}

// typed builds an output from contents whose Go type is the element type.
func typed[E tensor.Element](o *inference.ModelInferResponse_InferOutputTensor, dt tensor.DType, vals []E) (*tensor.Tensor, error) {
	if err := countContents(o, len(vals)); err != nil {
		return nil, err
	}
	return tensor.FromSlice(o.Name, dt, o.Shape, vals), nil
}

// narrowed builds an output of a narrower integer type than its contents
// field (INT8 from int_contents...), refusing values that do not fit.
func narrowed[E int8 | int16 | uint8 | uint16, F int32 | uint32](o *inference.ModelInferResponse_InferOutputTensor, dt tensor.DType, vals []F) (*tensor.Tensor, error) {
	out := make([]E, len(vals))
	for i, v := range vals {
		if F(E(v)) != v {
			return nil, fmt.Errorf("output %s: element %d = %d does not fit %v", o.Name, i, v, dt)
		}
		out[i] = E(v)
	}
	return typed(o, dt, out)
}

// values renders a tensor's elements as Go values for printing: numbers
// (FP16 and BF16 as float32), booleans, and strings for BYTES.
func values(t *tensor.Tensor) []any {
	switch t.DType {
	case tensor.Bytes:
		out := make([]any, len(t.Strings))
		for i, s := range t.Strings {
			out[i] = string(s)
		}
		return out
	case tensor.Bool:
		out := make([]any, len(t.Data))
		for i, v := range t.Data {
			out[i] = v != 0
		}
		return out
	case tensor.Uint8:
		return anys(t.Data)
	case tensor.Int8:
		return anys(tensor.View[int8](t))
	case tensor.Uint16:
		return anys(tensor.View[uint16](t))
	case tensor.FP16:
		return converted(tensor.View[uint16](t), fp16ToFloat32)
	case tensor.BF16:
		return converted(tensor.View[uint16](t), bf16ToFloat32)
	case tensor.Int16:
		return anys(tensor.View[int16](t))
	case tensor.Uint32:
		return anys(tensor.View[uint32](t))
	case tensor.Int32:
		return anys(tensor.View[int32](t))
	case tensor.Uint64:
		return anys(tensor.View[uint64](t))
	case tensor.Int64:
		return anys(tensor.View[int64](t))
	case tensor.FP32:
		return anys(tensor.View[float32](t))
	case tensor.FP64:
		return anys(tensor.View[float64](t))
	}
	return nil
}

func anys[E any](v []E) []any {
	return converted(v, func(e E) E { return e })
}

func converted[E, T any](v []E, conv func(E) T) []any {
	out := make([]any, len(v))
	for i, e := range v {
		out[i] = conv(e)
	}
	return out
}

// fp16ToFloat32 converts IEEE 754 binary16 bits to a float32 (exactly: every
// half value is a float32 value).
func fp16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch exp {
	case 0: // zero or subnormal: frac × 2^-24
		return math.Float32frombits(sign | math.Float32bits(float32(frac)/(1<<24)))
	case 0x1f: // infinity or NaN
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | frac<<13)
}

// bf16ToFloat32 converts bfloat16 bits (the top half of a float32) to a
// float32.
func bf16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// jsonValue makes v encodable as JSON: non-finite floats become the strings
// "NaN", "Infinity" and "-Infinity", and a string that is not UTF-8 (BYTES
// holding binary data) becomes {"b64": its base64}.
func jsonValue(v any) any {
	switch x := v.(type) {
	case float32:
		return jsonFloat(float64(x), v)
	case float64:
		return jsonFloat(x, v)
	case string:
		if !utf8.ValidString(x) {
			return map[string]string{"b64": base64.StdEncoding.EncodeToString([]byte(x))}
		}
	}
	return v
}

func jsonFloat(f float64, v any) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return v
}

// jsonOutput is one output in --json.
type jsonOutput struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
	Data     []any   `json:"data"`
}

func printOutputs(w io.Writer, resp *inference.ModelInferResponse, asJSON, full bool) error {
	outs, err := outputTensors(resp)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(w, resp, outs)
	}
	for _, t := range outs {
		shown, suffix := t, ""
		if n := t.Len(); !full && n > 16 {
			shown, suffix = head(t, 16), fmt.Sprintf(" ... (%d more)", n-16)
		}
		var v any = values(shown)
		if t.DType == tensor.Bytes {
			v = textStrings(shown.Strings)
		}
		fmt.Fprintf(w, "%s %s %v: %v%s\n", printable(t.Name), t.DType, t.Shape, v, suffix)
	}
	return nil
}

// head is a view of t's first n elements (t has more), so that printing
// the start of a large output does not convert every element.
func head(t *tensor.Tensor, n int) *tensor.Tensor {
	h := &tensor.Tensor{Name: t.Name, DType: t.DType, Shape: []int64{int64(n)}}
	if t.DType == tensor.Bytes {
		h.Strings = t.Strings[:n]
	} else {
		h.Data = t.Data[:n*t.DType.Size()]
	}
	return h
}

func printJSON(w io.Writer, resp *inference.ModelInferResponse, outs []*tensor.Tensor) error {
	list := make([]jsonOutput, len(outs))
	for i, t := range outs {
		list[i] = jsonOutput{t.Name, t.DType.String(), t.Shape, converted(values(t), jsonValue)}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(map[string]any{"model_name": resp.ModelName, "id": resp.Id, "outputs": list}); err != nil {
		return fmt.Errorf("print outputs as JSON: %w", err)
	}
	return nil
}

// textStrings renders BYTES elements for the text output: as they are when
// that is unambiguous, quoted (Go syntax) when one is empty, holds a space,
// a bracket, a quote, a control character or bytes that are not UTF-8
// (printed raw, ["a b", "c"] read as three values, an empty one vanished,
// and control characters reached the terminal).
func textStrings(ss [][]byte) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(' ')
		}
		if plain(s) {
			b.Write(s)
		} else {
			b.WriteString(strconv.Quote(string(s)))
		}
	}
	b.WriteByte(']')
	return b.String()
}

func plain(s []byte) bool {
	if len(s) == 0 || !utf8.Valid(s) {
		return false
	}
	for _, r := range string(s) {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(`[]"`, r) {
			return false
		}
	}
	return true
}
