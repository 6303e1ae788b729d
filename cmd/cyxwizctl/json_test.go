package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

func TestReadJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	read := func(text string, dt tensor.DType) (*tensor.Tensor, error) {
		t.Helper()
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return readJSON(p, dt)
	}
	// Shapes come from regular nesting only.
	if x, err := read(`[[1, 2, 3], [4, 5, 6]]`, tensor.FP32); err != nil || !slices.Equal(x.Shape, []int64{2, 3}) {
		t.Fatalf("2×3: %v, %v", x, err)
	}
	for _, ragged := range []string{`[[1], [2, 3], []]`, `[[1, 2], [3, [4]]]`, `[[1, 2], 3]`} {
		if x, err := read(ragged, tensor.FP32); err == nil {
			t.Errorf("%s accepted as shape %v", ragged, x.Shape)
		}
	}
	// Integers are exact, and must fit their type.
	x, err := read(`[9007199254740993, -9223372036854775808]`, tensor.Int64)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := int64(binary.LittleEndian.Uint64(x.Data)), int64(binary.LittleEndian.Uint64(x.Data[8:])); a != 9007199254740993 || b != -9223372036854775808 {
		t.Errorf("INT64 sent as %d, %d", a, b)
	}
	for _, bad := range []string{`[300]`, `[-1]`, `[1.5]`} {
		if x, err := read(bad, tensor.Uint8); err == nil {
			t.Errorf("UINT8 %s accepted as %v", bad, x.Data)
		}
	}
	if x, err := read(`{"datatype": "INT8", "shape": [2, 2], "data": [1, -2, 3, -4]}`, tensor.FP32); err != nil || x.DType != tensor.Int8 || int8(x.Data[1]) != -2 {
		t.Errorf("object form: %v, %v", x, err)
	}
}

// A JSON input file with more after its first value (two arrays, or
// garbage) is refused, not silently cut to the first value.
func TestReadJSONTrailingData(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	for _, text := range []string{"[1, 2]\n[3, 4]\n", "[1, 2] not json", `{"data": [1, 2]} {"data": [3]}`, `{"data": [1, 2]}]`} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if x, err := readJSON(p, tensor.FP32); err == nil {
			t.Errorf("%q accepted as shape %v (%d bytes)", text, x.Shape, len(x.Data))
		}
	}
	if err := os.WriteFile(p, []byte("[1, 2]\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readJSON(p, tensor.FP32); err != nil {
		t.Errorf("trailing white space: %v", err)
	}
}

// A node reporting more bytes done than the total does not crash the bar.
func TestProgressBarOvershoot(t *testing.T) {
	var b bytes.Buffer
	newProgressBar(&b).update(&cyxwizpb.DeploymentStatus{State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FETCHING,
		Progress: &cyxwizpb.Progress{Phase: "fetch model", DoneBytes: 11, TotalBytes: 10}})
	if !strings.Contains(b.String(), "100%") {
		t.Errorf("bar: %q", b.String())
	}
}

// An object that is not the {"datatype", "shape", "data"} form (a typo, or
// {"x": [...]} keyed by input name) is refused naming its keys and the two
// forms; it read as "element 0: want a number, got map[string]interface {}".
func TestReadJSONObjectWithoutData(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	for text, want := range map[string][]string{
		`{"x": [[1, 2]]}`:                     {`["x"]`, `"data"`, "nested array"},
		`{"datatype": "FP32", "dat": [1]}`:    {`["dat" "datatype"]`, `"data"`},
		`{"data": {"v": 1}}`:                  {`["v"]`},
		`[{"v": 1}]`:                          {"element 0", "an object"},
		`{"datatype": "FP32", "data": ["1"]}`: {"element 0", "a string"},
	} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := readJSON(p, tensor.FP32)
		if err == nil {
			t.Errorf("%s: accepted", text)
			continue
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not contain %s", text, err, w)
			}
		}
	}
}
