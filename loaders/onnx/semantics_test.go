package onnx_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// castValues are exactly representable in every datatype (BOOL aside, where
// ONNX Cast maps non-zero to true).
var castValues = []float64{0, 1, 2, 5, 7, 100, 1, 0}

// fp16Bits is the IEEE half-precision encoding of f, which must be zero or
// a normal number with at most 11 significant bits (no rounding).
func fp16Bits(f float32) uint16 {
	if f == 0 {
		return 0
	}
	b := math.Float32bits(f)
	exp := int((b>>23)&0xff) - 127 + 15
	return uint16(b>>16)&0x8000 | uint16(exp)<<10 | uint16(b>>13)&0x3ff
}

// encode makes a tensor of dt holding vals, as ONNX Cast would produce them
// from numbers: BOOL is val != 0, BYTES the shortest decimal form.
func encode(name string, dt tensor.DType, shape []int64, vals []float64) *tensor.Tensor {
	x := tensor.New(name, dt, shape...)
	for i, v := range vals {
		switch dt {
		case tensor.Bytes:
			x.Strings[i] = []byte(strconv.FormatFloat(v, 'g', -1, 64))
		case tensor.Bool:
			if v != 0 {
				x.Data[i] = 1
			}
		case tensor.Uint8, tensor.Int8:
			x.Data[i] = byte(int64(v))
		case tensor.Uint16, tensor.Int16:
			binary.LittleEndian.PutUint16(x.Data[2*i:], uint16(int64(v)))
		case tensor.Uint32, tensor.Int32:
			binary.LittleEndian.PutUint32(x.Data[4*i:], uint32(int64(v)))
		case tensor.Uint64, tensor.Int64:
			binary.LittleEndian.PutUint64(x.Data[8*i:], uint64(int64(v)))
		case tensor.FP16:
			binary.LittleEndian.PutUint16(x.Data[2*i:], fp16Bits(float32(v)))
		case tensor.BF16:
			binary.LittleEndian.PutUint16(x.Data[2*i:], uint16(math.Float32bits(float32(v))>>16))
		case tensor.FP32:
			binary.LittleEndian.PutUint32(x.Data[4*i:], math.Float32bits(float32(v)))
		case tensor.FP64:
			binary.LittleEndian.PutUint64(x.Data[8*i:], math.Float64bits(v))
		}
	}
	return x
}

// TestCastMatrix runs Cast from every datatype to every other one, on a
// [-1, 4] model with batches of 2 and 1, and checks the values ONNX Cast
// defines.
func TestCastMatrix(t *testing.T) {
	l := newLoader(t)
	for _, from := range tensor.DTypes() {
		for _, to := range tensor.DTypes() {
			t.Run(from.String()+"_to_"+to.String(), func(t *testing.T) {
				p := writeModel(t, "cast.onnx", onnxtest.Cast(onnxTypes[from], onnxTypes[to], []int64{-1, 4}))
				m := load(t, l, p, loaders.Options{IntraOpThreads: 1})
				for _, batch := range []int64{2, 1} {
					vals := castValues[:4*batch]
					src := vals
					if from == tensor.Bool {
						src = make([]float64, len(vals))
						for i, v := range vals {
							if v != 0 {
								src[i] = 1
							}
						}
					}
					want := encode("y", to, []int64{batch, 4}, src)
					got, err := m.Infer(context.Background(), []*tensor.Tensor{encode("x", from, []int64{batch, 4}, src)}, nil)
					if err != nil {
						t.Fatalf("batch %d: %v", batch, err)
					}
					if len(got) != 1 || !loadertest.Equal(got[0], want) {
						t.Errorf("batch %d: y = %+v, want %+v", batch, got[0], want)
					}
				}
			})
		}
	}
}

// TestMultipleDynamicDims runs Identity models with two and three dynamic
// dimensions (named, so the FP16/BF16 outputs can be sized) for every
// datatype, on shapes that change from call to call.
func TestMultipleDynamicDims(t *testing.T) {
	l := newLoader(t)
	for _, dt := range tensor.DTypes() {
		t.Run(dt.String(), func(t *testing.T) {
			for _, model := range [][]int64{{-1, -1}, {-1, 2, -1}} {
				m := load(t, l, writeModel(t, "id.onnx", onnxtest.Identity(onnxTypes[dt], model)), loaders.Options{})
				shapes := [][]int64{{2, 3}, {1, 5}, {4, 1}}
				if len(model) == 3 {
					shapes = [][]int64{{2, 2, 3}, {1, 2, 1}, {3, 2, 2}}
				}
				for _, shape := range shapes {
					in := payload("x", dt, shape)
					want := in.Clone()
					want.Name = "y"
					if got := infer(t, m, nil, in); !loadertest.Equal(got[0], want) {
						t.Errorf("model %v, shape %v: y = %+v, want %+v", model, shape, got[0], want)
					}
				}
			}
		})
	}
}

// A graph output that is a graph input (a pass-through value) is the input.
// ORT returns it by swapping the feed in for the fetch, so the buffer this
// package pre-allocates for FP16, BF16 and rank-0 outputs was never written:
// they came back all zeros.
func TestOutputIsInput(t *testing.T) {
	l := newLoader(t)
	cases := []struct {
		dt    tensor.DType
		shape []int64 // model shape; the input is [2, 4] or rank 0
	}{
		{tensor.FP16, []int64{-1, 4}}, {tensor.BF16, []int64{-1, 4}},
		{tensor.FP32, []int64{-1, 4}}, {tensor.Int64, []int64{-1, 4}},
		{tensor.Bool, []int64{-1, 4}}, {tensor.Bytes, []int64{-1, 4}},
		{tensor.FP32, []int64{}}, {tensor.Int64, []int64{}},
		{tensor.Uint8, []int64{}}, {tensor.FP64, []int64{}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v%v", c.dt, c.shape), func(t *testing.T) {
			m := load(t, l, writeModel(t, "alias.onnx", onnxtest.InputAsOutput(onnxTypes[c.dt], c.shape)), loaders.Options{})
			shape := []int64{}
			if len(c.shape) > 0 {
				shape = []int64{2, 4}
			}
			in := payload("x", c.dt, shape)
			if len(shape) == 0 && c.dt != tensor.Bytes {
				for i := range in.Data {
					in.Data[i] = byte(0x41 + i) // not zero
				}
			}
			y, x := in.Clone(), in.Clone()
			y.Name = "y"
			y.Shape, x.Shape = slices.Clone(shape), slices.Clone(shape)
			for _, sel := range []struct {
				names []string
				want  []*tensor.Tensor
			}{
				{nil, []*tensor.Tensor{y, x}},
				{[]string{"x"}, []*tensor.Tensor{x}},
				{[]string{"x", "y"}, []*tensor.Tensor{x, y}},
			} {
				got := infer(t, m, sel.names, in)
				if !slices.EqualFunc(got, sel.want, loadertest.Equal) {
					t.Errorf("outputs %q: got %+v, want %+v", sel.names, got, sel.want)
				}
			}
		})
	}
}

// ONNX BOOL is 0 or 1; ORT reads each byte as a C++ bool, so a raw BOOL
// input holding another byte (KServe's raw contents can) gave undefined
// results: Cast to INT32 returned 2 and 255 for true, Identity passed them
// through. Any non-zero byte is true.
func TestBoolInputBytes(t *testing.T) {
	l := newLoader(t)
	in := &tensor.Tensor{Name: "x", DType: tensor.Bool, Shape: []int64{1, 4}, Data: []byte{0, 1, 2, 255}}
	for _, to := range []tensor.DType{tensor.Bool, tensor.Int32, tensor.FP32, tensor.Bytes} {
		t.Run(to.String(), func(t *testing.T) {
			m := load(t, l, writeModel(t, "cast.onnx", onnxtest.Cast(onnxtest.Bool, onnxTypes[to], []int64{-1, 4})), loaders.Options{})
			want := encode("y", to, []int64{1, 4}, []float64{0, 1, 1, 1})
			if got := infer(t, m, nil, in); !loadertest.Equal(got[0], want) {
				t.Errorf("y = %+v, want %+v", got[0], want)
			}
		})
	}
	if !bytes.Equal(in.Data, []byte{0, 1, 2, 255}) {
		t.Errorf("the caller's input changed to %v", in.Data)
	}
}

// TestConcurrentInfer runs models that take each output path (ORT-allocated
// numeric and BYTES, pre-allocated FP16 and rank-0, pass-through) from many
// goroutines at once, some with contexts cancelled mid-flight, then closes
// them under load. Results must be exact; run with -race.
func TestConcurrentInfer(t *testing.T) {
	l := newLoader(t)
	type job struct {
		m    loaders.Model
		make func(batch int64) (in *tensor.Tensor, want []*tensor.Tensor)
	}
	cast := func(from, to tensor.DType) job {
		m, err := l.Load(context.Background(), writeModel(t, "c.onnx", onnxtest.Cast(onnxTypes[from], onnxTypes[to], []int64{-1, 4})), loaders.Options{IntraOpThreads: 1})
		if err != nil {
			t.Fatal(err)
		}
		return job{m, func(batch int64) (*tensor.Tensor, []*tensor.Tensor) {
			v := castValues[:4*batch]
			return encode("x", from, []int64{batch, 4}, v), []*tensor.Tensor{encode("y", to, []int64{batch, 4}, v)}
		}}
	}
	alias := func(dt tensor.DType, shape []int64) job {
		m, err := l.Load(context.Background(), writeModel(t, "a.onnx", onnxtest.InputAsOutput(onnxTypes[dt], shape)), loaders.Options{IntraOpThreads: 1})
		if err != nil {
			t.Fatal(err)
		}
		return job{m, func(batch int64) (*tensor.Tensor, []*tensor.Tensor) {
			s := []int64{}
			if len(shape) > 0 {
				s = []int64{batch, 4}
			}
			in := payload("x", dt, s)
			y, x := in.Clone(), in.Clone()
			y.Name = "y"
			y.Shape, x.Shape = slices.Clone(s), slices.Clone(s)
			return in, []*tensor.Tensor{y, x}
		}}
	}
	jobs := []job{
		cast(tensor.FP32, tensor.FP16), cast(tensor.FP16, tensor.Int64), cast(tensor.BF16, tensor.Bytes),
		cast(tensor.Bytes, tensor.FP64), cast(tensor.Int8, tensor.Bool),
		alias(tensor.FP16, []int64{-1, 4}), alias(tensor.FP32, []int64{}), alias(tensor.Bytes, []int64{-1, 4}),
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var calls atomic.Int64
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				j := jobs[r.IntN(len(jobs))]
				in, want := j.make(1 + r.Int64N(2))
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if i%3 == 0 {
					ctx, cancel = context.WithCancel(ctx)
					if i%6 == 0 {
						cancel() // before or during the run
					}
				}
				got, err := j.m.Infer(ctx, []*tensor.Tensor{in}, nil)
				cancel()
				switch {
				case errors.Is(err, context.Canceled), errors.Is(err, loaders.ErrClosed):
				case err != nil:
					t.Errorf("Infer: %v", err)
					return
				case !slices.EqualFunc(got, want, loadertest.Equal):
					t.Errorf("got %+v, want %+v", got, want)
					return
				default:
					calls.Add(1)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	for _, j := range jobs {
		if err := j.m.Close(); err != nil {
			t.Error(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	if calls.Load() == 0 {
		t.Error("no call succeeded")
	}
	t.Logf("%d successful calls", calls.Load())
}
