package onnx

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	ort "github.com/yalue/onnxruntime_go"
)

func TestReadGraphValues(t *testing.T) {
	cases := []struct {
		name  string
		model []byte
		want  map[string]graphValue
	}{
		{"linear", onnxtest.Linear([][]float32{{1, 2}, {3, 4}}, []float32{0, 0}), map[string]graphValue{
			"X": {true, []string{"batch", ""}},
			"Y": {true, []string{"batch", ""}},
		}},
		{"multi io", onnxtest.MultiIO(), map[string]graphValue{
			"A": {true, []string{"batch", ""}}, "B": {true, []string{"batch", ""}},
			"sum": {true, []string{"batch", ""}}, "prod": {true, []string{"batch", ""}},
		}},
		{"scalar", onnxtest.Identity(onnxtest.Float, []int64{}), map[string]graphValue{
			"x": {true, nil}, "y": {true, nil},
		}},
		{"dynamic", onnxtest.Identity(onnxtest.Float16, []int64{-1, 3, -1}), map[string]graphValue{
			"x": {true, []string{"batch", "", "d2"}}, "y": {true, []string{"batch", "", "d2"}},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := readGraphValues(bytes.NewReader(c.model))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			for name, w := range c.want {
				if g, ok := got[name]; !ok || g.hasShape != w.hasShape || !slices.Equal(g.params, w.params) {
					t.Errorf("%s = %+v, want %+v", name, g, w)
				}
			}
		})
	}
}

func TestReadGraphValuesErrors(t *testing.T) {
	model := onnxtest.Linear([][]float32{{1, 2}, {3, 4}}, []float32{0, 0})
	for name, b := range map[string][]byte{
		"empty":     nil,
		"no graph":  {0x08, 0x08}, // ir_version = 8
		"truncated": model[:len(model)-20],
		"garbage":   []byte("\xffnot a model"),
	} {
		if _, err := readGraphValues(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := readGraphValues(bytes.NewReader(model[:len(model)-20])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v, want io.ErrUnexpectedEOF", err)
	}
}

// A file's weights are sought past, not read; what is read is the same as
// from a stream, and a file cut inside the weights is still an error.
func TestReadGraphValuesSeeks(t *testing.T) {
	w := make([][]float32, 300) // 300×300 FP32: 360 kB, past the read buffer
	for i := range w {
		w[i] = make([]float32, 300)
	}
	model := onnxtest.Linear(w, make([]float32, 300))
	want, err := readGraphValues(io.MultiReader(bytes.NewReader(model))) // no Seek
	if err != nil {
		t.Fatal(err)
	}
	r := &countingReader{r: bytes.NewReader(model)}
	got, err := readGraphValues(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !slices.Equal(got["X"].params, want["X"].params) || !slices.Equal(got["Y"].params, want["Y"].params) {
		t.Fatalf("with Seek: %v, without: %v", got, want)
	}
	if r.n > 64<<10*2 {
		t.Errorf("read %d bytes of a %d-byte model", r.n, len(model))
	}
	for _, cut := range []int{len(model) / 2, len(model) - 20} {
		if _, err := readGraphValues(bytes.NewReader(model[:cut])); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut at %d of %d: %v, want io.ErrUnexpectedEOF", cut, len(model), err)
		}
	}
}

type countingReader struct {
	r *bytes.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func (c *countingReader) Seek(off int64, whence int) (int64, error) { return c.r.Seek(off, whence) }

func FuzzReadGraphValues(f *testing.F) {
	f.Add(onnxtest.Linear([][]float32{{1}}, []float32{0}))
	f.Add(onnxtest.MultiIO())
	f.Add(onnxtest.Identity(onnxtest.String, []int64{}))
	f.Add(onnxtest.Identity(onnxtest.Bfloat16, []int64{-1, 2, -1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		readGraphValues(bytes.NewReader(b)) // must not panic or hang
	})
}

func TestDTypeMapping(t *testing.T) {
	for _, d := range tensor.DTypes() {
		got, ok := dtypeOf(ortTypes[d])
		if !ok || got != d {
			t.Errorf("%v -> %v -> %v, %v", d, ortTypes[d], got, ok)
		}
		if (codecs[d].value == nil) != (d == tensor.FP16 || d == tensor.BF16 || d == tensor.Bytes) {
			t.Errorf("%v: codec %+v", d, codecs[d])
		}
	}
	for _, o := range []ort.TensorElementDataType{
		ort.TensorElementDataTypeUndefined,
		ort.TensorElementDataTypeComplex64, ort.TensorElementDataTypeComplex128,
		ort.TensorElementDataTypeFloat8E4M3FN, ort.TensorElementDataTypeFloat8E4M3FNUZ,
		ort.TensorElementDataTypeFloat8E5M2, ort.TensorElementDataTypeFloat8E5M2FNUZ,
		ort.TensorElementDataTypeUint4, ort.TensorElementDataTypeInt4, 23, // float4e2m1
	} {
		if d, ok := dtypeOf(o); ok {
			t.Errorf("%v maps to %v, want no KServe datatype", o, d)
		}
	}
}

func TestPlan(t *testing.T) {
	inputs := []inputSpec{
		{TensorSpec: loaders.TensorSpec{Name: "ids", DType: tensor.Int64, Shape: []int64{-1, -1}}},
		{TensorSpec: loaders.TensorSpec{Name: "img", DType: tensor.FP16, Shape: []int64{-1, 3, -1, -1}}},
	}
	graph := map[string]graphValue{
		"ids": {true, []string{"batch", "seq"}},
		"img": {true, []string{"n", "", "h", "w"}},
		"out": {true, []string{"batch", "", "w", "anon", ""}},
	}
	cases := []struct {
		name     string
		out      loaders.TensorSpec
		prealloc bool
		dims     []dimSource
		err      string
	}{
		{"fp32 dynamic", loaders.TensorSpec{Name: "out", DType: tensor.FP32, Shape: []int64{-1, 2}}, false, nil, ""},
		{"fp32 scalar", loaders.TensorSpec{Name: "out", DType: tensor.FP32, Shape: []int64{}}, true, nil, ""},
		{"bytes scalar", loaders.TensorSpec{Name: "out", DType: tensor.Bytes, Shape: []int64{}}, false, nil, ""},
		{"fp32 unknown", loaders.TensorSpec{Name: "out", DType: tensor.FP32}, false, nil, "no declared shape"},
		{"bytes unknown", loaders.TensorSpec{Name: "out", DType: tensor.Bytes}, false, nil, ""},
		{"fp16 fixed", loaders.TensorSpec{Name: "out", DType: tensor.FP16, Shape: []int64{2, 3}}, true, []dimSource{{2, -1, 0}, {3, -1, 0}}, ""},
		{"fp16 named", loaders.TensorSpec{Name: "out", DType: tensor.FP16, Shape: []int64{-1, 7, -1}}, true, []dimSource{{-1, 0, 0}, {7, -1, 0}, {-1, 1, 3}}, ""},
		{"bf16 anonymous", loaders.TensorSpec{Name: "out", DType: tensor.BF16, Shape: []int64{-1, 7, -1, -1}}, false, nil, "dynamic dimension 3"},
		{"bf16 unnamed", loaders.TensorSpec{Name: "out", DType: tensor.BF16, Shape: []int64{-1, 7, -1, 2, -1}}, false, nil, "dynamic dimension 4"},
		{"fp16 scalar", loaders.TensorSpec{Name: "out", DType: tensor.FP16, Shape: []int64{}}, false, nil, "rank-0 FP16"},
		{"fp16 unknown", loaders.TensorSpec{Name: "out", DType: tensor.FP16}, false, nil, "no declared shape"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := outputSpec{TensorSpec: c.out}
			err := o.plan(inputs, func() (map[string]graphValue, error) { return graph, nil })
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("plan error %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.prealloc != c.prealloc || !slices.Equal(o.dims, c.dims) {
				t.Fatalf("plan = %v %v, want %v %v", o.prealloc, o.dims, c.prealloc, c.dims)
			}
		})
	}
}

func TestAboutInput(t *testing.T) {
	for msg, want := range map[string]bool{
		"Error running network: Got invalid dimensions for input: x for the following indices\n index: 1 Got: 5 Expected: 4":     true,
		"Error running network: Invalid rank for input: x Got: 1 Expected: 2 Please fix either the inputs/outputs or the model.": true,
		"Error running network: Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))":                true,
		// A kernel refusing the shape the request gave (the model's dynamic
		// dimensions let it through): the request's fault as well.
		"Error running network: Non-zero status code returned while running Conv node. Name:'c' Status Message: Invalid input shape: {0,5}":                                         true,
		"Error running network: Non-zero status code returned while running Add node. Name:'a' Status Message: Attempting to broadcast an axis by a dimension other than 1. 3 by 5": true,
		"Error running network: Non-zero status code returned while running Gemm node. Name:'g' Status Message: Not enough memory":                                                  false,
	} {
		if got := aboutInput(errors.New(msg)); got != want {
			t.Errorf("aboutInput(%q) = %v, want %v", msg, got, want)
		}
	}
}

// An output allocated before the run is sized from the request's
// dimensions, which an empty input may set to anything: past a bound the
// request is refused before anything is allocated.
func TestPreallocBound(t *testing.T) {
	o := outputSpec{TensorSpec: loaders.TensorSpec{Name: "y", DType: tensor.FP16, Shape: []int64{-1}},
		prealloc: true, dims: []dimSource{{size: -1, input: 0, axis: 0}}}
	for _, rows := range []int64{1 << 40, 1 << 62} {
		x := &tensor.Tensor{Name: "x", DType: tensor.FP32, Shape: []int64{rows, 0}}
		if _, err := o.alloc([]*tensor.Tensor{x}); !errors.Is(err, loaders.ErrInvalidInput) {
			t.Errorf("%d rows: %v, want ErrInvalidInput", rows, err)
		}
	}
}
