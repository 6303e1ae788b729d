package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// A BYTES element that --json printed as {"b64": ...} (bytes that are not
// UTF-8, such as an image) reads back as those bytes: an output fed back
// as an input, or a PNG sent through --input, was refused with "want a
// string for BYTES".
func TestReadJSONBytesBase64(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	text := `{"datatype": "BYTES", "shape": [3], "data": [{"b64": "if8="}, "aé", {"b64": ""}]}`
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	x, err := readJSON(p, tensor.FP32)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Strings) != 3 || string(x.Strings[0]) != "\x89\xff" || string(x.Strings[1]) != "aé" || len(x.Strings[2]) != 0 {
		t.Errorf("BYTES read as %q", x.Strings)
	}
	for _, bad := range []string{`[{"b64": "!!"}]`, `[{"b64": 1}]`, `[{"b64": "aa==", "x": 1}]`, `[{"x": "aa=="}]`} {
		if err := os.WriteFile(p, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if x, err := readJSON(p, tensor.Bytes); err == nil {
			t.Errorf("%s accepted as %q", bad, x.Strings)
		}
	}
}

// An empty (or blank) JSON input file says so, not just "EOF".
func TestReadJSONEmptyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	for _, text := range []string{"", " \n"} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := readJSON(p, tensor.FP32)
		if err == nil || !strings.Contains(err.Error(), "no JSON value") {
			t.Errorf("%q: error %v, want one that says the file holds no JSON value", text, err)
		}
	}
}

// A shape with a negative dimension (a model's -1 copied into the JSON) or
// one past int64 is named as such, not as "needs -1 values".
func TestReadJSONBadShape(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	for _, text := range []string{`{"shape": [-1, 2], "data": [1, 2]}`, `{"shape": [-1, -2], "data": [1, 2]}`, `{"shape": [3037000500, 3037000500], "data": [1]}`} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := readJSON(p, tensor.FP32)
		if err == nil || strings.Contains(err.Error(), "-1 values") || !strings.Contains(err.Error(), "0 or more") {
			t.Errorf("%s: error %v, want one that says the dimensions are wrong", text, err)
		}
	}
}

// A JSON input the model's metadata does not list (a pipeline's "image",
// when the node describes only the model behind its guests) holding
// strings is sent as BYTES; it was read as FP32 and refused with "want a
// number, got a string". Numbers (and "NaN") still go as FP32.
func TestInferUnlistedInputStrings(t *testing.T) {
	f := &fakeInference{
		inputs: []*inference.ModelMetadataResponse_TensorMetadata{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 2}}},
		infers: make(chan *inference.ModelInferRequest, 1),
	}
	addr := fakeServe(t, func(s *grpc.Server) { inference.RegisterGRPCInferenceServiceServer(s, f) })
	for _, c := range []struct{ text, dt string }{
		{`[{"b64": "if8="}, "a"]`, "BYTES"},
		{`[["png"]]`, "BYTES"},
		{`["NaN", 1]`, "FP32"},
		{`[1, 2]`, "FP32"},
	} {
		js := tempFile(t, "image.json", c.text)
		if code, out, errOut := ctl("--addr", addr, "infer", "m", "--input", "image="+js); code != 0 {
			t.Fatalf("%s: infer: %d %q %q", c.text, code, out, errOut)
		}
		r := <-f.infers
		if len(r.Inputs) != 1 || r.Inputs[0].Datatype != c.dt {
			t.Errorf("%s sent as %v, want %s", c.text, r.Inputs, c.dt)
		}
	}
}
