package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// writeNPYHeader writes a version 1.0 .npy file with header as given.
func writeNPYHeader(t *testing.T, path, header string, data []byte) {
	t.Helper()
	for (10+len(header)+1)%64 != 0 {
		header += " "
	}
	header += "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(header)))
	b.WriteString(header)
	b.Write(data)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A 1-byte type has no byte order, '>' included ('>u1' was refused while
// '<u1' and '=u1' were read); '=' (and '|' or none) on a wider type is the
// reader's order, as numpy.dtype reads it: little-endian here. Big-endian
// wider types are refused saying so.
func TestReadNPYByteOrders(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.npy")
	for _, descr := range []string{">u1", ">i1", ">b1"} {
		writeNPY(t, p, descr, []int{2}, []byte{1, 0})
		if x, err := readNPY(p); err != nil || x.DType.Size() != 1 || !bytes.Equal(x.Data, []byte{1, 0}) {
			t.Errorf("%s: %v %v", descr, x, err)
		}
	}
	data := binary.LittleEndian.AppendUint32(nil, math.Float32bits(1.5))
	for _, descr := range []string{"=f4", "|f4", "f4"} {
		writeNPY(t, p, descr, []int{1}, data)
		if x, err := readNPY(p); err != nil || x.DType != tensor.FP32 || !bytes.Equal(x.Data, data) {
			t.Errorf("%s: %v %v", descr, x, err)
		}
	}
	writeNPY(t, p, ">f4", []int{1}, data)
	if _, err := readNPY(p); err == nil || !strings.Contains(err.Error(), "big-endian") {
		t.Errorf(">f4: %v", err)
	}
}

// The header is a Python literal: NumPy reads double-quoted keys and
// strings, and Python 2's NumPy wrote dimensions as 2L.
func TestReadNPYHeaderSpellings(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.npy")
	for _, header := range []string{
		`{"descr": "<i2", "fortran_order": False, "shape": (2, 1)}`,
		`{'descr': '<i2', 'fortran_order': False, 'shape': (2L, 1L), }`,
	} {
		writeNPYHeader(t, p, header, []byte{1, 0, 2, 0})
		if x, err := readNPY(p); err != nil || x.DType != tensor.Int16 || !slices.Equal(x.Shape, []int64{2, 1}) {
			t.Errorf("%s: %v %v", header, x, err)
		}
	}
}

// Types the node has no datatype for are refused saying what is wanted.
func TestReadNPYUnsupportedDtypes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.npy")
	for _, descr := range []string{"|O", "<U5", "|S3", "<c8", "<M8[ns]", "|V2"} {
		writeNPY(t, p, descr, []int{1}, make([]byte, 8))
		if _, err := readNPY(p); err == nil || !strings.Contains(err.Error(), descr) || !strings.Contains(err.Error(), "f4") {
			t.Errorf("%s: %v", descr, err)
		}
	}
}

// NaN and infinities read from JSON, spelt as --json prints them (strings)
// and as Python's json.dumps writes them (bare, not JSON); they printed in
// --json but could not be sent back ("want a number, got a string", or
// "invalid character 'N'").
func TestReadJSONNonFinite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	read := func(text string, dt tensor.DType) (*tensor.Tensor, error) {
		t.Helper()
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return readJSON(p, dt)
	}
	for _, text := range []string{
		`["NaN", "Infinity", "-Infinity", 1]`,
		`[NaN, Infinity, -Infinity, 1]`,
		`{"datatype": "FP32", "shape": [2, 2], "data": [[NaN,Infinity],[-Infinity,1]]}`,
	} {
		x, err := read(text, tensor.FP32)
		if err != nil {
			t.Errorf("%s: %v", text, err)
			continue
		}
		v := tensor.View[float32](x)
		if len(v) != 4 || !math.IsNaN(float64(v[0])) || !math.IsInf(float64(v[1]), 1) || !math.IsInf(float64(v[2]), -1) || v[3] != 1 {
			t.Errorf("%s: %v", text, v)
		}
	}
	if x, err := read(`["-Infinity"]`, tensor.FP64); err != nil || !math.IsInf(tensor.View[float64](x)[0], -1) {
		t.Errorf("FP64: %v %v", x, err)
	}
	// Not for integers, and strings stay strings.
	if _, err := read(`["NaN"]`, tensor.Int32); err == nil {
		t.Error(`INT32 "NaN" accepted`)
	}
	if x, err := read(`["NaN", "a\"NaN", "\\"]`, tensor.Bytes); err != nil || string(x.Strings[1]) != `a"NaN` || string(x.Strings[2]) != `\` {
		t.Errorf("BYTES: %q %v", x.Strings, err)
	}
}

// FP16 and BF16 inputs read from JSON, rounded to nearest even from the
// number as written; they were refused ("use a .npy file"), and .npy has no
// BF16, so a BF16 input could not be given at all.
func TestReadJSONHalfFloats(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	for _, tc := range []struct {
		dt   tensor.DType
		text string
		want []uint16
	}{
		// 1, -2, 65504 (max), 2^-24 (min subnormal), 2^-25 (tie: to 0), 2^-25+2^-40 (to 2^-24),
		// 1023.5×2^-24 (tie: to the min normal), 1+2^-11 (tie: to 1), 1+2^-11+2^-40 (above the tie:
		// up; through float32 it was the tie), -0, infinities, NaN.
		{tensor.FP16, `[1, -2, 65504, 5.9604644775390625e-8, 2.98023223876953125e-8, 2.9803231865830850e-8,
			6.100535392761230469e-5, 1.00048828125, 1.000488281250909, -0.0, "Infinity", "-Infinity", "NaN"]`,
			[]uint16{0x3c00, 0xc000, 0x7bff, 0x0001, 0x0000, 0x0001, 0x0400, 0x3c00, 0x3c01, 0x8000, 0x7c00, 0xfc00, 0x7e00}},
		// 1, -3, max, 1+2^-8 (tie: to 1), min subnormal 2^-133.
		{tensor.BF16, `[1, -3, 3.3895313892515355e38, 1.00390625, 9.183549615799121e-41]`,
			[]uint16{0x3f80, 0xc040, 0x7f7f, 0x3f80, 0x0001}},
	} {
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		x, err := readJSON(p, tc.dt)
		if err != nil {
			t.Errorf("%v: %v", tc.dt, err)
			continue
		}
		if got := tensor.View[uint16](x); !slices.Equal(got, tc.want) {
			t.Errorf("%v: %04x, want %04x", tc.dt, got, tc.want)
		}
	}
	// Finite numbers past the largest value are refused, as for FP32.
	for dt, text := range map[tensor.DType]string{tensor.FP16: "[65520]", tensor.BF16: "[3.4e38]"} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if x, err := readJSON(p, dt); err == nil {
			t.Errorf("%v %s accepted as %x", dt, text, x.Data)
		}
	}
}

// Printing the first 16 elements of a large output converts those only;
// it converted every element (an interface value each) before cutting.
func TestPrintLargeOutputConvertsHead(t *testing.T) {
	const n = 1 << 20
	raw := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(1.5))
	}
	resp := rawResponse("y", "FP32", []int64{1024, 1024}, raw)
	var b bytes.Buffer
	if err := printOutputs(&b, resp, false, false); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("y FP32 [1024 1024]: %v ... (%d more)\n", slices.Repeat([]float32{1.5}, 16), n-16)
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
	allocs := testing.AllocsPerRun(3, func() {
		b.Reset()
		printOutputs(&b, resp, false, false)
	})
	if allocs > 1000 {
		t.Errorf("printing 16 of %d elements: %.0f allocations", n, allocs)
	}
}

// fakeInference answers ModelMetadata with inputs and records ModelInfer.
type fakeInference struct {
	inference.UnimplementedGRPCInferenceServiceServer
	inputs []*inference.ModelMetadataResponse_TensorMetadata
	infers chan *inference.ModelInferRequest
}

func (f *fakeInference) ModelMetadata(ctx context.Context, r *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	return &inference.ModelMetadataResponse{Name: r.Name, Inputs: f.inputs}, nil
}

func (f *fakeInference) ModelInfer(ctx context.Context, r *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	f.infers <- r
	return &inference.ModelInferResponse{ModelName: r.ModelName}, nil
}

// An input whose metadata datatype the client does not know (a newer
// node's type) is read as FP32 and sent as such; it was built as an
// INVALID tensor with no data and sent with datatype "INVALID".
func TestInferUnknownMetadataDatatype(t *testing.T) {
	f := &fakeInference{
		inputs: []*inference.ModelMetadataResponse_TensorMetadata{{Name: "x", Datatype: "FP8", Shape: []int64{2}}},
		infers: make(chan *inference.ModelInferRequest, 1),
	}
	addr := fakeServe(t, func(s *grpc.Server) { inference.RegisterGRPCInferenceServiceServer(s, f) })
	js := tempFile(t, "x.json", "[1, 2]")
	if code, out, errOut := ctl("--addr", addr, "infer", "m", "--input", "x="+js); code != 0 {
		t.Fatalf("infer: %d %q %q", code, out, errOut)
	}
	r := <-f.infers
	if len(r.Inputs) != 1 || r.Inputs[0].Datatype != "FP32" || len(r.RawInputContents) != 1 || len(r.RawInputContents[0]) != 8 {
		t.Fatalf("sent %v with %d raw contents", r.Inputs, len(r.RawInputContents))
	}
}
