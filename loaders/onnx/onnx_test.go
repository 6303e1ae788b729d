package onnx_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	ort "github.com/yalue/onnxruntime_go"
)

const (
	libRel   = "onnxruntime/libonnxruntime.so.1"
	ppocrRel = "models/ppocr-cls.onnx"
	ppocrIn  = "x"
	ppocrOut = "softmax_0.tmp_0"
)

func newLoader(t testing.TB) *onnx.Loader {
	t.Helper()
	l := onnx.New(onnx.Config{LibraryPath: loadertest.NativeLib(t, libRel)})
	if err := l.Available(); err != nil {
		t.Fatalf("Available: %v", err)
	}
	return l
}

func writeModel(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t testing.TB, l loaders.Loader, path string, opts loaders.Options) loaders.Model {
	t.Helper()
	m, err := l.Load(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func infer(t testing.TB, m loaders.Model, names []string, inputs ...*tensor.Tensor) []*tensor.Tensor {
	t.Helper()
	out, err := m.Infer(context.Background(), inputs, names)
	if err != nil {
		t.Fatalf("Infer: %v", err)
	}
	return out
}

func f32(name string, shape []int64, v ...float32) *tensor.Tensor {
	return tensor.FromSlice(name, tensor.FP32, shape, v)
}

func TestConformance(t *testing.T) {
	l := newLoader(t)
	w := [][]float32{{1, 2}, {3, 4}, {5, 6}}
	loadertest.Run(t, l, loadertest.Fixtures{
		Model:  writeModel(t, "linear.onnx", onnxtest.Linear(w, []float32{0.5, -1})),
		Inputs: []*tensor.Tensor{f32("X", []int64{2, 3}, 1, 1, 1, 1, -2, 0.5)},
		Want:   []*tensor.Tensor{f32("Y", []int64{2, 2}, 9.5, 11, -2, -4)},
	})
}

func TestConformancePPOCR(t *testing.T) {
	l := newLoader(t)
	loadertest.Run(t, l, loadertest.Fixtures{
		Model:  loadertest.NativeLib(t, ppocrRel),
		Inputs: []*tensor.Tensor{ppocrInput(1, 1)},
		Check:  func(t testing.TB, got []*tensor.Tensor) { checkSoftmax(t, got, 1) },
	})
}

// onnxTypes is the ONNX element type of each KServe datatype.
var onnxTypes = map[tensor.DType]onnxtest.ElemType{
	tensor.Bool: onnxtest.Bool, tensor.Uint8: onnxtest.Uint8, tensor.Uint16: onnxtest.Uint16,
	tensor.Uint32: onnxtest.Uint32, tensor.Uint64: onnxtest.Uint64, tensor.Int8: onnxtest.Int8,
	tensor.Int16: onnxtest.Int16, tensor.Int32: onnxtest.Int32, tensor.Int64: onnxtest.Int64,
	tensor.FP16: onnxtest.Float16, tensor.BF16: onnxtest.Bfloat16, tensor.FP32: onnxtest.Float,
	tensor.FP64: onnxtest.Double, tensor.Bytes: onnxtest.String,
}

// payload returns n elements of dt: real values for the float types
// (-3, -1.5, 0, 1.5, ...), 0/1 for BOOL, distinct byte patterns otherwise.
func payload(name string, dt tensor.DType, shape []int64) *tensor.Tensor {
	x := tensor.New(name, dt, shape...)
	n := int(x.Len())
	for i := range n {
		v := float32(i)*1.5 - 3
		switch dt {
		case tensor.Bytes:
			x.Strings[i] = []byte([]string{"a", "", "héllo", "x y", "\xff\xfe", "long string with spaces", "7", "日本"}[i%8])
		case tensor.Bool:
			x.Data[i] = byte(i % 2)
		case tensor.FP32:
			binary.LittleEndian.PutUint32(x.Data[4*i:], math.Float32bits(v))
		case tensor.FP64:
			binary.LittleEndian.PutUint64(x.Data[8*i:], math.Float64bits(float64(v)))
		case tensor.BF16:
			binary.LittleEndian.PutUint16(x.Data[2*i:], uint16(math.Float32bits(v)>>16))
		case tensor.FP16:
			fp16 := []uint16{0xc200, 0xbe00, 0x0000, 0x3e00, 0x4200, 0x4500, 0x4680, 0x4800} // -3, -1.5, 0, ... 10.5
			binary.LittleEndian.PutUint16(x.Data[2*i:], fp16[i%8])
		default:
			s := dt.Size()
			for j := range s {
				x.Data[i*s+j] = byte(i*s + j + 1)
			}
			x.Data[i*s+s-1] |= 0x80 // negative for signed types
		}
	}
	return x
}

func TestIdentityDTypes(t *testing.T) {
	l := newLoader(t)
	for _, dt := range tensor.DTypes() {
		t.Run(dt.String(), func(t *testing.T) {
			m := load(t, l, writeModel(t, "id.onnx", onnxtest.Identity(onnxTypes[dt], []int64{-1, 4})), loaders.Options{})
			info := m.Info()
			if info.Inputs[0].DType != dt || info.Outputs[0].DType != dt {
				t.Fatalf("Info() datatypes %v -> %v, want %v", info.Inputs[0].DType, info.Outputs[0].DType, dt)
			}
			for _, batch := range []int64{2, 3, 1} {
				in := payload("x", dt, []int64{batch, 4})
				want := in.Clone()
				want.Name = "y"
				got := infer(t, m, nil, in)
				if len(got) != 1 || !loadertest.Equal(got[0], want) {
					t.Fatalf("batch %d: y = %+v, want %+v", batch, got[0], want)
				}
			}
		})
	}
}

func TestRankZeroAndEmpty(t *testing.T) {
	l := newLoader(t)
	cases := []struct {
		name    string
		dt      tensor.DType
		model   []int64 // Identity shape
		in      []int64
		loadErr string // substring of the Load error, if it must fail
		inErr   string // substring of the Infer error, if it must fail
	}{
		{name: "FP32 scalar", dt: tensor.FP32, model: []int64{}, in: []int64{}},
		{name: "INT64 scalar", dt: tensor.Int64, model: []int64{}, in: []int64{}},
		{name: "BOOL scalar", dt: tensor.Bool, model: []int64{}, in: []int64{}},
		{name: "FP16 scalar", dt: tensor.FP16, model: []int64{}, loadErr: "rank-0 FP16"},
		// Every request to it would be refused: it does not load.
		{name: "BYTES scalar", dt: tensor.Bytes, model: []int64{}, loadErr: "rank-0 BYTES"},
		{name: "FP32 empty", dt: tensor.FP32, model: []int64{-1, 4}, in: []int64{0, 4}},
		{name: "INT8 empty", dt: tensor.Int8, model: []int64{-1, 4}, in: []int64{0, 4}},
		{name: "BYTES empty", dt: tensor.Bytes, model: []int64{-1, 4}, in: []int64{0, 4}},
		{name: "BF16 empty", dt: tensor.BF16, model: []int64{-1, 4}, in: []int64{0, 4}, inErr: "empty BF16"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeModel(t, "id.onnx", onnxtest.Identity(onnxTypes[c.dt], c.model))
			m, err := l.Load(context.Background(), p, loaders.Options{})
			if c.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.loadErr) || !strings.Contains(err.Error(), p) {
					t.Fatalf("Load error %v, want one naming %s and containing %q", err, p, c.loadErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			defer m.Close()
			if got := m.Info().Outputs[0].Shape; got == nil || !slices.Equal(got, c.model) {
				t.Errorf("Info() output shape %#v, want %v", got, c.model)
			}
			in := payload("x", c.dt, c.in)
			got, err := m.Infer(context.Background(), []*tensor.Tensor{in}, nil)
			if c.inErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.inErr) {
					t.Fatalf("Infer error %v, want one containing %q", err, c.inErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Infer: %v", err)
			}
			want := in.Clone()
			want.Name = "y"
			if want.Data != nil && len(want.Data) == 0 {
				want.Data = got[0].Data // nil and empty are the same data
			}
			if !slices.Equal(got[0].Shape, want.Shape) || !bytes.Equal(got[0].Data, want.Data) ||
				!slices.EqualFunc(got[0].Strings, want.Strings, bytes.Equal) {
				t.Fatalf("y = %+v, want %+v", got[0], want)
			}
		})
	}
}

func TestMultiIO(t *testing.T) {
	l := newLoader(t)
	m := load(t, l, writeModel(t, "multi.onnx", onnxtest.MultiIO()), loaders.Options{})
	a := f32("A", []int64{2, 4}, 1, 2, 3, 4, 5, 6, 7, 8)
	b := f32("B", []int64{2, 4}, 0.5, -1, 2, 0, 10, 1, -3, 0.25)
	sum := f32("sum", []int64{2, 4}, 1.5, 1, 5, 4, 15, 7, 4, 8.25)
	prod := f32("prod", []int64{2, 4}, 0.5, -2, 6, 0, 50, 6, -21, 2)

	for _, c := range []struct {
		names []string
		want  []*tensor.Tensor
	}{
		{nil, []*tensor.Tensor{sum, prod}},
		{[]string{"sum", "prod"}, []*tensor.Tensor{sum, prod}},
		{[]string{"prod", "sum"}, []*tensor.Tensor{prod, sum}},
		{[]string{"prod"}, []*tensor.Tensor{prod}},
		{[]string{"sum"}, []*tensor.Tensor{sum}},
	} {
		// Input order does not matter either.
		got := infer(t, m, c.names, b, a)
		if !slices.EqualFunc(got, c.want, loadertest.Equal) {
			t.Errorf("outputs %q: got %+v, want %+v", c.names, got, c.want)
		}
	}
	for _, names := range [][]string{{"sum", "sum"}, {"diff"}, {"sum", ""}} {
		if _, err := m.Infer(context.Background(), []*tensor.Tensor{a, b}, names); !errors.Is(err, loaders.ErrInvalidInput) {
			t.Errorf("outputs %q: error %v, want ErrInvalidInput", names, err)
		}
	}
	if _, err := m.Infer(context.Background(), []*tensor.Tensor{a}, nil); !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), `missing input "B"`) {
		t.Errorf("missing B: error %v", err)
	}
	if _, err := m.Infer(context.Background(), []*tensor.Tensor{a, a}, nil); !errors.Is(err, loaders.ErrInvalidInput) {
		t.Errorf("A twice: error %v", err)
	}
}

func TestInt64Model(t *testing.T) {
	l := newLoader(t)
	m := load(t, l, writeModel(t, "int64.onnx", onnxtest.Int64Model()), loaders.Options{})
	ids := tensor.FromSlice("ids", tensor.Int64, []int64{2, 3}, []int64{0, 1, -1, 1 << 40, 7, -100})
	want := tensor.FromSlice("out", tensor.Int64, []int64{2, 3}, []int64{1, 3, -1, 1<<41 + 1, 15, -199})
	if got := infer(t, m, nil, ids); !loadertest.Equal(got[0], want) {
		t.Fatalf("out = %v, want %v", tensor.View[int64](got[0]), tensor.View[int64](want))
	}
}

// ppocrInput is a deterministic batch×3×48×192 image in [-1, 1].
func ppocrInput(batch int64, seed uint64) *tensor.Tensor {
	x := tensor.New(ppocrIn, tensor.FP32, batch, 3, 48, 192)
	r := rand.New(rand.NewPCG(seed, 42))
	v := tensor.View[float32](x)
	for i := range v {
		v[i] = r.Float32()*2 - 1
	}
	return x
}

func checkSoftmax(t testing.TB, got []*tensor.Tensor, batch int64) {
	t.Helper()
	if len(got) != 1 || got[0].Name != ppocrOut || got[0].DType != tensor.FP32 || !slices.Equal(got[0].Shape, []int64{batch, 2}) {
		t.Fatalf("got %+v, want one FP32 %s of shape [%d 2]", got, ppocrOut, batch)
	}
	p := tensor.View[float32](got[0])
	for b := range batch {
		row := p[2*b : 2*b+2]
		sum := float64(row[0]) + float64(row[1])
		if math.Abs(sum-1) > 1e-5 || row[0] < 0 || row[1] < 0 {
			t.Errorf("row %d = %v sums to %v, want probabilities summing to 1", b, row, sum)
		}
	}
}

func TestPPOCR(t *testing.T) {
	l := newLoader(t)
	path := loadertest.NativeLib(t, ppocrRel)
	m := load(t, l, path, loaders.Options{IntraOpThreads: 2})
	info := m.Info()
	fi, _ := os.Stat(path)
	wantInfo := loaders.Info{
		Format: "onnx", Platform: "onnxruntime_onnx",
		Inputs:      []loaders.TensorSpec{{Name: ppocrIn, DType: tensor.FP32, Shape: []int64{-1, 3, -1, -1}}},
		Outputs:     []loaders.TensorSpec{{Name: ppocrOut, DType: tensor.FP32, Shape: []int64{-1, 2}}},
		MemoryBytes: fi.Size(),
		Providers:   []string{"cpu"},
	}
	if !infoEqual(info, wantInfo) {
		t.Errorf("Info() = %+v, want %+v", info, wantInfo)
	}
	info.Inputs[0].Shape[0] = 99 // the caller's copy
	if m.Info().Inputs[0].Shape[0] != -1 {
		t.Error("modifying Info()'s result changed the model's")
	}

	checkSoftmax(t, infer(t, m, nil, ppocrInput(1, 1)), 1)
	batch4 := infer(t, m, []string{ppocrOut}, ppocrInput(4, 2))
	checkSoftmax(t, batch4, 4)

	// Each row of a batch is classified as it is alone.
	one := ppocrInput(4, 2)
	one.Shape[0], one.Data = 1, one.Data[len(one.Data)/4*3:]
	alone := tensor.View[float32](infer(t, m, nil, one)[0])
	last := tensor.View[float32](batch4[0])[6:]
	for i := range alone {
		if math.Abs(float64(alone[i]-last[i])) > 1e-5 {
			t.Errorf("row 3 in a batch: %v, alone: %v", last, alone)
			break
		}
	}

	// A cancellable context takes the RunOptions path.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := m.Infer(ctx, []*tensor.Tensor{ppocrInput(1, 1)}, nil)
	if err != nil {
		t.Fatalf("Infer with a cancellable context: %v", err)
	}
	checkSoftmax(t, out, 1)
}

// TestCancelDuringRun stops a long run through ORT's terminate flag.
func TestCancelDuringRun(t *testing.T) {
	l := newLoader(t)
	m := load(t, l, loadertest.NativeLib(t, ppocrRel), loaders.Options{})
	big := []*tensor.Tensor{ppocrInput(64, 4)} // ~100 ms of CPU
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		start := time.Now()
		_, err := m.Infer(ctx, big, nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Infer error %v, want context.DeadlineExceeded", err)
		}
		t.Logf("stopped after %v: %v", time.Since(start), err)
		// The terminated RunOptions is not reused.
		ctx, cancel = context.WithCancel(context.Background())
		out, err := m.Infer(ctx, []*tensor.Tensor{ppocrInput(1, 1)}, nil)
		cancel()
		if err != nil {
			t.Fatalf("Infer after a cancelled one: %v", err)
		}
		checkSoftmax(t, out, 1)
	}
}

func infoEqual(a, b loaders.Info) bool {
	specs := func(a, b loaders.TensorSpec) bool {
		return a.Name == b.Name && a.DType == b.DType && slices.Equal(a.Shape, b.Shape)
	}
	return a.Format == b.Format && a.Platform == b.Platform && a.MemoryBytes == b.MemoryBytes &&
		slices.Equal(a.Providers, b.Providers) &&
		slices.EqualFunc(a.Inputs, b.Inputs, specs) && slices.EqualFunc(a.Outputs, b.Outputs, specs)
}

func TestInputErrors(t *testing.T) {
	l := newLoader(t)
	m := load(t, l, loadertest.NativeLib(t, ppocrRel), loaders.Options{})
	strs := load(t, l, writeModel(t, "strings.onnx", onnxtest.Identity(onnxtest.String, []int64{-1, 2})), loaders.Options{})
	ok := ppocrInput(1, 1)
	cases := []struct {
		name string
		m    loaders.Model
		in   *tensor.Tensor
		want string
	}{
		{"rank", m, f32("x", []int64{1, 3, 48}), `input "x": shape [1 3 48] has rank 3, model wants rank 4 [-1 3 -1 -1]`},
		{"fixed dim", m, tensor.New("x", tensor.FP32, 1, 4, 48, 192), `input "x": shape [1 4 48 192] has 4 at dimension 1, model wants 3 (shape [-1 3 -1 -1])`},
		{"dtype", m, tensor.New("x", tensor.FP64, 1, 3, 48, 192), `input "x": datatype FP64, model wants FP32`},
		{"short data", m, &tensor.Tensor{Name: "x", DType: tensor.FP32, Shape: ok.Shape, Data: ok.Data[4:]}, `needs 110592 bytes, got 110588`},
		{"negative dim", m, &tensor.Tensor{Name: "x", DType: tensor.FP32, Shape: []int64{-1, 3, 48, 192}, Data: ok.Data}, `shape [-1 3 48 192]`},
		{"unknown", m, f32("image", []int64{1}, 0), `unknown input "image" (model inputs: x)`},
		{"NUL", strs, &tensor.Tensor{Name: "x", DType: tensor.Bytes, Shape: []int64{1, 2}, Strings: [][]byte{[]byte("a\x00b"), nil}}, `BYTES element 0 contains a NUL byte`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.m.Infer(context.Background(), []*tensor.Tensor{c.in}, nil)
			if !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrInvalidInput containing %q", err, c.want)
			}
		})
	}
	// What passes the declared shape can still fail inside the graph.
	_, err := m.Infer(context.Background(), []*tensor.Tensor{tensor.New("x", tensor.FP32, 1, 3, 0, 5)}, nil)
	if err == nil || !strings.Contains(err.Error(), "Conv") {
		t.Fatalf("0×5 image: error %v, want ORT's Conv error", err)
	}
}

func TestProviders(t *testing.T) {
	l := newLoader(t)
	path := writeModel(t, "linear.onnx", onnxtest.Linear([][]float32{{1}}, []float32{0}))
	for _, c := range []struct {
		providers []string
		warnings  int
	}{
		{nil, 0},
		{[]string{"cpu"}, 0},
		{[]string{"CPU"}, 0},
		{[]string{"cuda", "cpu"}, 1},
		{[]string{"tensorrt", "cuda", "cpu"}, 2},
		{[]string{"cuda"}, 1},
		// A provider that cannot be set up warns once, however often listed.
		{[]string{"cuda", "CUDA", "cpu"}, 1},
		// CPU takes every node: what comes after it is never tried (ORT
		// would have put CUDA ahead of CPU, against the list's order).
		{[]string{"cpu", "cuda"}, 0},
		{[]string{"cpu", "tensorrt", "cuda"}, 0},
	} {
		var log bytes.Buffer
		opts := loaders.Options{Providers: c.providers, Logger: slog.New(slog.NewTextHandler(&log, nil))}
		m := load(t, l, path, opts)
		if got := m.Info().Providers; !slices.Equal(got, []string{"cpu"}) {
			t.Errorf("%q: providers %q, want [cpu] (this ONNX Runtime has no GPU providers)", c.providers, got)
		}
		if n := strings.Count(log.String(), "level=WARN"); n != c.warnings {
			t.Errorf("%q: %d warnings, want %d:\n%s", c.providers, n, c.warnings, log.String())
		}
		t.Logf("%q: %s", c.providers, log.String())
		infer(t, m, nil, f32("X", []int64{1, 1}, 2))
	}

	_, err := l.Load(context.Background(), path, loaders.Options{Providers: []string{"cuda", "rocm"}})
	if err == nil || !strings.Contains(err.Error(), `"rocm"`) {
		t.Fatalf("unknown provider: error %v, want one naming it", err)
	}
}

func TestLoadErrors(t *testing.T) {
	l := newLoader(t)
	const complex64 = onnxtest.ElemType(14)
	for name, path := range map[string]string{
		"directory": t.TempDir(),
		"complex":   writeModel(t, "complex.onnx", onnxtest.Identity(complex64, []int64{-1, 4})),
		"empty":     writeModel(t, "empty.onnx", nil),
	} {
		_, err := l.Load(context.Background(), path, loaders.Options{})
		if !errors.Is(err, loaders.ErrInvalidModel) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v, want ErrInvalidModel naming %s", name, err, path)
		}
	}
	// Garbage bytes: named once, with ONNX Runtime's reason ("Load model
	// from PATH failed:" and "Error loading temporary session" repeated it).
	garbage := writeModel(t, "garbage.onnx", bytes.Repeat([]byte{0xff, 0x13, 0x00}, 300))
	_, err := l.Load(context.Background(), garbage, loaders.Options{})
	if !errors.Is(err, loaders.ErrInvalidModel) || strings.Count(err.Error(), garbage) != 1 ||
		strings.Contains(err.Error(), "temporary session") || !strings.Contains(err.Error(), "Protobuf parsing failed") {
		t.Errorf("garbage model: %v, want ErrInvalidModel naming the file once, with ORT's reason", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Load(ctx, writeModel(t, "m.onnx", onnxtest.MultiIO()), loaders.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Load: %v", err)
	}
}

func TestAvailable(t *testing.T) {
	newLoader(t) // initialise from lib/
	for name, cfg := range map[string]onnx.Config{
		"other library": {LibraryPath: "/nonexistent/libonnxruntime.so"},
		"log level":     {LibraryPath: loadertest.NativeLib(t, libRel), LogLevel: "loud"},
	} {
		l := onnx.New(cfg)
		err := l.Available()
		if !errors.Is(err, loaders.ErrUnavailable) {
			t.Errorf("%s: Available() = %v, want ErrUnavailable", name, err)
		}
		if _, lerr := l.Load(context.Background(), "x.onnx", loaders.Options{}); !errors.Is(lerr, loaders.ErrUnavailable) {
			t.Errorf("%s: Load error %v, want ErrUnavailable", name, lerr)
		}
		t.Logf("%s: %v", name, err)
	}
	if f := onnx.New(onnx.Config{}).Format(); f != "onnx" {
		t.Errorf("Format() = %q", f)
	}
	r := loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: loadertest.NativeLib(t, libRel), LogLevel: "error"}))
	if _, err := r.Get("ONNX"); err != nil {
		t.Errorf("registry: %v", err)
	}
}

// TestCloseDuringInfer closes a model while goroutines are running it: each
// call either completes or fails with ErrClosed, and nothing crashes.
func TestCloseDuringInfer(t *testing.T) {
	l := newLoader(t)
	m, err := l.Load(context.Background(), loadertest.NativeLib(t, ppocrRel), loaders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	in := ppocrInput(1, 3)
	var wg sync.WaitGroup
	started := make(chan struct{}, 8)
	for range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				_, err := m.Infer(context.Background(), []*tensor.Tensor{in}, nil)
				if i == 0 {
					started <- struct{}{}
				}
				if errors.Is(err, loaders.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 8 {
		<-started
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// BenchmarkPPOCRRun is one batch-1 ppocr-cls inference through the loader.
func BenchmarkPPOCRRun(b *testing.B) {
	l := newLoader(b)
	m := load(b, l, loadertest.NativeLib(b, ppocrRel), loaders.Options{})
	in := []*tensor.Tensor{ppocrInput(1, 1)}
	ctx := context.Background()
	for b.Loop() {
		if _, err := m.Infer(ctx, in, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPPOCRRawORT is the same run through onnxruntime_go directly,
// with the input tensor made once: the floor for BenchmarkPPOCRRun.
func BenchmarkPPOCRRawORT(b *testing.B) {
	newLoader(b) // initialises ORT
	s, err := ort.NewDynamicAdvancedSession(loadertest.NativeLib(b, ppocrRel), []string{ppocrIn}, []string{ppocrOut}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Destroy()
	x := ppocrInput(1, 1)
	in, err := ort.NewCustomDataTensor(x.Shape, x.Data, ort.TensorElementDataTypeFloat)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Destroy()
	ins := []ort.Value{in}
	for b.Loop() {
		outs := []ort.Value{nil}
		if err := s.Run(ins, outs); err != nil {
			b.Fatal(err)
		}
		outs[0].Destroy()
	}
}

// BenchmarkOverhead measures what the loader adds to a run of a model that
// does almost nothing (Identity of 1×4 FP32): validation, wrapping the
// input, copying the output out, and with a cancellable context the
// RunOptions that lets it stop the run.
func BenchmarkOverhead(b *testing.B) {
	l := newLoader(b)
	path := writeModel(b, "id.onnx", onnxtest.Identity(onnxtest.Float, []int64{-1, 4}))
	x := f32("x", []int64{1, 4}, 1, 2, 3, 4)
	// One intra-op thread on both sides: ORT's thread pool would only add noise.
	b.Run("raw", func(b *testing.B) {
		so, err := ort.NewSessionOptions()
		if err != nil {
			b.Fatal(err)
		}
		defer so.Destroy()
		if err := so.SetIntraOpNumThreads(1); err != nil {
			b.Fatal(err)
		}
		s, err := ort.NewDynamicAdvancedSession(path, []string{"x"}, []string{"y"}, so)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Destroy()
		for b.Loop() {
			in, err := ort.NewCustomDataTensor(x.Shape, x.Data, ort.TensorElementDataTypeFloat)
			if err != nil {
				b.Fatal(err)
			}
			outs := []ort.Value{nil}
			if err := s.Run([]ort.Value{in}, outs); err != nil {
				b.Fatal(err)
			}
			in.Destroy()
			outs[0].Destroy()
		}
	})
	m := load(b, l, path, loaders.Options{IntraOpThreads: 1})
	in := []*tensor.Tensor{x}
	b.Run("loader", func(b *testing.B) {
		ctx := context.Background()
		for b.Loop() {
			if _, err := m.Infer(ctx, in, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("loader-cancellable", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for b.Loop() {
			if _, err := m.Infer(ctx, in, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A shape the model's dynamic dimensions let through but one of its kernels
// refuses (PP-OCR's Conv with a width of 0) is the request's fault:
// ErrInvalidInput (InvalidArgument), not an internal error.
func TestKernelRefusesInputShape(t *testing.T) {
	l := newLoader(t)
	m := load(t, l, loadertest.NativeLib(t, ppocrRel), loaders.Options{IntraOpThreads: 1})
	x := tensor.New(ppocrIn, tensor.FP32, 1, 3, 48, 0)
	_, err := m.Infer(context.Background(), []*tensor.Tensor{x}, nil)
	if !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), "Invalid input shape") {
		t.Fatalf("PP-OCR on [1,3,48,0]: %v, want ErrInvalidInput naming the shape", err)
	}
	checkSoftmax(t, infer(t, m, nil, ppocrInput(1, 1)), 1) // the model still serves
}

// inter_op_threads above 1 runs the session in ONNX Runtime's parallel
// execution mode (the setting did nothing without it): MultiIO's two
// independent branches give the same results there, call after call.
func TestParallelExecutionMode(t *testing.T) {
	l := newLoader(t)
	m := load(t, l, writeModel(t, "multi.onnx", onnxtest.MultiIO()), loaders.Options{IntraOpThreads: 1, InterOpThreads: 2})
	a := f32("A", []int64{2, 4}, 1, 2, 3, 4, 5, 6, 7, 8)
	b := f32("B", []int64{2, 4}, 0.5, -1, 2, 0, 10, 1, -3, 0.25)
	want := []*tensor.Tensor{
		f32("sum", []int64{2, 4}, 1.5, 1, 5, 4, 15, 7, 4, 8.25),
		f32("prod", []int64{2, 4}, 0.5, -2, 6, 0, 50, 6, -21, 2),
	}
	for range 50 {
		if got := infer(t, m, nil, a, b); !slices.EqualFunc(got, want, loadertest.Equal) {
			t.Fatalf("parallel mode: got %+v, want %+v", got, want)
		}
	}
}
