package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"strings"
	"testing"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// rawResponse is a response with one raw output.
func rawResponse(name, datatype string, shape []int64, raw []byte) *inference.ModelInferResponse {
	return &inference.ModelInferResponse{
		Outputs:           []*inference.ModelInferResponse_InferOutputTensor{{Name: name, Datatype: datatype, Shape: shape}},
		RawOutputContents: [][]byte{raw},
	}
}

// jsonData prints resp with --json and returns its first output's data.
func jsonData(t *testing.T, resp *inference.ModelInferResponse) []any {
	t.Helper()
	var b bytes.Buffer
	if err := printOutputs(&b, resp, true, false); err != nil {
		t.Fatalf("--json: %v", err)
	}
	var doc struct {
		Outputs []struct {
			Data []any `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil || len(doc.Outputs) == 0 {
		t.Fatalf("--json output %q: %v", b.String(), err)
	}
	return doc.Outputs[0].Data
}

// FP16 and BF16 outputs print as numbers, not as their bit patterns, in
// text and --json.
func TestHalfFloatOutputs(t *testing.T) {
	resp := &inference.ModelInferResponse{
		Outputs: []*inference.ModelInferResponse_InferOutputTensor{
			{Name: "h", Datatype: "FP16", Shape: []int64{4}},
			{Name: "b", Datatype: "BF16", Shape: []int64{2}},
		},
		// FP16 1, -2, 2^-24 (the smallest subnormal), +Inf; BF16 1, -3.
		RawOutputContents: [][]byte{{0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0x00, 0x7C}, {0x80, 0x3F, 0x40, 0xC0}},
	}
	var b bytes.Buffer
	if err := printOutputs(&b, resp, false, false); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "h FP16 [4]: [1 -2 5.9604645e-08 +Inf]\nb BF16 [2]: [1 -3]\n"; got != want {
		t.Errorf("text output:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	if err := printOutputs(&b, resp, true, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"data": [
        1,
        -2,
        5.9604645e-8,
        "Infinity"
      ]`, `"data": [
        1,
        -3
      ]`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("--json output lacks %s:\n%s", want, b.String())
		}
	}
}

// --json prints NaN and infinities (a model's ordinary answer to bad input)
// as the strings "NaN", "Infinity" and "-Infinity" instead of failing.
func TestJSONOutputNonFinite(t *testing.T) {
	raw := make([]byte, 16)
	for i, f := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 0.5} {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
	}
	got := jsonData(t, rawResponse("y", "FP32", []int64{4}, raw))
	if want := []any{"NaN", "Infinity", "-Infinity", 0.5}; !equalAny(got, want) {
		t.Errorf("FP32 data: %v, want %v", got, want)
	}
	raw = make([]byte, 8)
	binary.LittleEndian.PutUint64(raw, math.Float64bits(math.Inf(-1)))
	if got := jsonData(t, rawResponse("y", "FP64", []int64{1}, raw)); !equalAny(got, []any{"-Infinity"}) {
		t.Errorf("FP64 data: %v", got)
	}
}

// Outputs sent as typed contents print, each field read with its own Go
// type: FP32 values, INT64 above 2^53 exactly, INT8 from int_contents.
func TestTypedContentsOutput(t *testing.T) {
	for _, tc := range []struct {
		datatype string
		shape    []int64
		contents *inference.InferTensorContents
		want     string
	}{
		{"FP32", []int64{2}, &inference.InferTensorContents{Fp32Contents: []float32{1.5, 2}}, "y FP32 [2]: [1.5 2]\n"},
		{"INT64", []int64{1}, &inference.InferTensorContents{Int64Contents: []int64{9007199254740993}}, "y INT64 [1]: [9007199254740993]\n"},
		{"INT8", []int64{2}, &inference.InferTensorContents{IntContents: []int32{-128, 127}}, "y INT8 [2]: [-128 127]\n"},
		{"UINT64", []int64{1}, &inference.InferTensorContents{Uint64Contents: []uint64{math.MaxUint64}}, "y UINT64 [1]: [18446744073709551615]\n"},
		{"BOOL", []int64{2}, &inference.InferTensorContents{BoolContents: []bool{true, false}}, "y BOOL [2]: [true false]\n"},
		{"BYTES", []int64{1}, &inference.InferTensorContents{BytesContents: [][]byte{[]byte("hi")}}, "y BYTES [1]: [hi]\n"},
	} {
		resp := &inference.ModelInferResponse{Outputs: []*inference.ModelInferResponse_InferOutputTensor{
			{Name: "y", Datatype: tc.datatype, Shape: tc.shape, Contents: tc.contents}}}
		var b bytes.Buffer
		if err := printOutputs(&b, resp, false, false); err != nil || b.String() != tc.want {
			t.Errorf("typed %s contents: %v %q, want %q", tc.datatype, err, b.String(), tc.want)
		}
	}
	// Values that do not fit, or too few of them, are an error.
	for _, o := range []*inference.ModelInferResponse_InferOutputTensor{
		{Name: "y", Datatype: "INT8", Shape: []int64{1}, Contents: &inference.InferTensorContents{IntContents: []int32{300}}},
		{Name: "y", Datatype: "FP32", Shape: []int64{3}, Contents: &inference.InferTensorContents{Fp32Contents: []float32{1}}},
	} {
		resp := &inference.ModelInferResponse{Outputs: []*inference.ModelInferResponse_InferOutputTensor{o}}
		if err := printOutputs(&bytes.Buffer{}, resp, false, false); err == nil {
			t.Errorf("%s %v from %v: no error", o.Datatype, o.Shape, o.Contents)
		}
	}
}

// A BYTES element that is not UTF-8 (an encoded image from a postprocess
// guest) survives --json as {"b64": ...}; a UTF-8 one stays a string.
func TestJSONOutputBinaryBytes(t *testing.T) {
	raw := []byte{2, 0, 0, 0, 0x89, 0xff, 3, 0, 0, 0, 'a', 0xc3, 0xa9}
	got := jsonData(t, rawResponse("png", "BYTES", []int64{2}, raw))
	if want := []any{map[string]any{"b64": "if8="}, "aé"}; !equalAny(got, want) {
		t.Errorf("BYTES data: %v, want %v", got, want)
	}
}

func equalAny(a, b []any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// BYTES values in the text output are quoted where printing them raw is
// ambiguous: ["a b", "c"] printed as [a b c], an empty value vanished, and
// control characters went to the terminal.
func TestBytesOutputUnambiguous(t *testing.T) {
	resp := &inference.ModelInferResponse{Outputs: []*inference.ModelInferResponse_InferOutputTensor{{
		Name: "y", Datatype: "BYTES", Shape: []int64{5},
		Contents: &inference.InferTensorContents{BytesContents: [][]byte{[]byte("a b"), []byte("c"), {}, []byte("\x1b[2J"), []byte("ok")}},
	}}}
	var out bytes.Buffer
	if err := printOutputs(&out, resp, false, false); err != nil {
		t.Fatal(err)
	}
	if want := "y BYTES [5]: [\"a b\" c \"\" \"\\x1b[2J\" ok]\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

// A node's message quotes what a guest or a loader said: printed as it
// came, its newlines forged rows of ls and watch and its escape sequences
// drove the terminal. Messages are printed on one line, escaped; errors
// keep their lines but not their escapes.
func TestMessagesPrintable(t *testing.T) {
	msg := "format_load: root:x:0:0\nnode-2  fake  onnx  READY\x1b[2J\tend"
	if got, want := printable(msg), `format_load: root:x:0:0\nnode-2  fake  onnx  READY\x1b[2J\tend`; got != want {
		t.Errorf("printable = %q, want %q", got, want)
	}
	if got, want := printableLines(msg), "format_load: root:x:0:0\nnode-2  fake  onnx  READY\\x1b[2J\\tend"; got != want {
		t.Errorf("printableLines = %q, want %q", got, want)
	}
	if s := "plain über 模型"; printable(s) != s {
		t.Errorf("a plain message changed: %q", printable(s))
	}
	var b strings.Builder
	printStatusLine(&b, &cyxwizpb.DeploymentStatus{DeploymentId: "d", State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED, Message: msg})
	if out := b.String(); strings.Count(out, "\n") != 1 || strings.Contains(out, "\x1b") {
		t.Errorf("status line %q: want one line without escapes", out)
	}
}
