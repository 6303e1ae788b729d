package guest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// testImage is a deterministic RGB picture of w×h.
func testImage(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x*7 + y*13) % 256), 255})
		}
	}
	return img
}

func encodePNG(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// nativePre is the reference preprocessing, written independently of the
// host operations: decode, bilinear resize with half-pixel centres,
// (p/255 - 0.5)/0.5, NCHW.
func nativePre(t testing.TB, file []byte, oh, ow int) []float32 {
	img, _, err := image.Decode(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	px := make([][3]float32, w*h)
	for y := range h {
		for x := range w {
			r, g, bl, _ := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).RGBA()
			px[y*w+x] = [3]float32{float32(r >> 8), float32(g >> 8), float32(bl >> 8)}
		}
	}
	src := func(f float64, n int) (int, int, float32) {
		f = math.Max(f, 0)
		l := int(f)
		if l >= n-1 {
			return n - 1, n - 1, 0
		}
		return l, l + 1, float32(f - float64(l))
	}
	out := make([]float32, 3*oh*ow)
	for oy := range oh {
		y0, y1, fy := src((float64(oy)+0.5)*float64(h)/float64(oh)-0.5, h)
		for ox := range ow {
			x0, x1, fx := src((float64(ox)+0.5)*float64(w)/float64(ow)-0.5, w)
			for c := range 3 {
				top := px[y0*w+x0][c]*(1-fx) + px[y0*w+x1][c]*fx
				bot := px[y1*w+x0][c]*(1-fx) + px[y1*w+x1][c]*fx
				v := top*(1-fy) + bot*fy
				out[c*oh*ow+oy*ow+ox] = (v/255 - 0.5) / 0.5
			}
		}
	}
	return out
}

func maxDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func bytesTensor(name string, v ...[]byte) *tensor.Tensor {
	return &tensor.Tensor{Name: name, DType: tensor.Bytes, Shape: []int64{int64(len(v))}, Strings: v}
}

func TestPPOCRPre(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	p := newPool(t, rt, "guests/examples/ppocr-pre", guest.PoolConfig{Require: []guest.Entry{guest.EntryPreprocess}})
	img := testImage(160, 40)
	tests := []struct {
		name  string
		files [][]byte
	}{
		{"png", [][]byte{encodePNG(t, img)}},
		{"jpeg", [][]byte{encodeJPEG(t, img)}},
		{"upscale", [][]byte{encodePNG(t, testImage(37, 11))}},
		{"batch", [][]byte{encodePNG(t, img), encodeJPEG(t, testImage(300, 64))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := p.Preprocess(context.Background(), []*tensor.Tensor{bytesTensor("image", tt.files...)})
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != 1 || out[0].Name != "x" || out[0].DType != tensor.FP32 ||
				!reflect.DeepEqual(out[0].Shape, []int64{int64(len(tt.files)), 3, 48, 192}) {
				t.Fatalf("got %v", out)
			}
			var want []float32
			for _, f := range tt.files {
				want = append(want, nativePre(t, f, 48, 192)...)
			}
			if d := maxDiff(tensor.View[float32](out[0]), want); d > 1e-4 {
				t.Fatalf("max difference from the native reference: %g", d)
			}
		})
	}
	t.Run("not an image", func(t *testing.T) {
		_, err := p.Preprocess(context.Background(), []*tensor.Tensor{bytesTensor("image", []byte("nope"))})
		if !errorsIs(err, guest.ErrGuest) || !strings.Contains(err.Error(), "image") {
			t.Fatalf("err = %v, want ErrGuest about the image", err)
		}
	})
}

func TestClsPost(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	scores := tensor.FromSlice("softmax_0.tmp_0", tensor.FP32, []int64{3, 2}, []float32{0.9, 0.1, 0.2, 0.8, 0.5, 0.5})
	softmax := func(a, b float32) float32 { return float32(1 / (1 + math.Exp(float64(b-a)))) }
	tests := []struct {
		name   string
		config map[string]string
		labels []string
		score  []float32
		shape  []int64
	}{
		{"labels", map[string]string{"labels": "0,180"}, []string{"0", "180", "0"}, []float32{0.9, 0.8, 0.5}, []int64{3, 1}},
		{"no labels", nil, []string{"0", "1", "0"}, []float32{0.9, 0.8, 0.5}, []int64{3, 1}},
		{"softmax", map[string]string{"labels": "0,180", "softmax": "true"}, []string{"0", "180", "0"},
			[]float32{softmax(0.9, 0.1), softmax(0.8, 0.2), 0.5}, []int64{3, 1}},
		{"top2", map[string]string{"labels": "up,down", "top_k": "2"}, []string{"up", "down", "down", "up", "up", "down"},
			[]float32{0.9, 0.1, 0.8, 0.2, 0.5, 0.5}, []int64{3, 2}},
		// A top_k past the classes gives them all: the host's topk
		// refused k=5 of 2, and every call failed.
		{"top_k above classes", map[string]string{"labels": "up,down", "top_k": "5"}, []string{"up", "down", "down", "up", "up", "down"},
			[]float32{0.9, 0.1, 0.8, 0.2, 0.5, 0.5}, []int64{3, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t, rt, "guests/examples/cls-post", guest.PoolConfig{Config: tt.config})
			out, err := p.Postprocess(context.Background(), []*tensor.Tensor{scores})
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != 2 || out[0].Name != "label" || out[1].Name != "score" {
				t.Fatalf("outputs %v", out)
			}
			var labels []string
			for _, s := range out[0].Strings {
				labels = append(labels, string(s))
			}
			if !reflect.DeepEqual(labels, tt.labels) || !reflect.DeepEqual(out[0].Shape, tt.shape) || !reflect.DeepEqual(out[1].Shape, tt.shape) {
				t.Fatalf("labels %v %v, want %v %v", labels, out[0].Shape, tt.labels, tt.shape)
			}
			if d := maxDiff(tensor.View[float32](out[1]), tt.score); d > 1e-6 {
				t.Fatalf("scores %v, want %v", tensor.View[float32](out[1]), tt.score)
			}
		})
	}
}

func TestLatencyBatch(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	p := newPool(t, rt, "guests/examples/latency-batch", guest.PoolConfig{
		Config:  map[string]string{"max_wait_us": "1000"},
		Require: []guest.Entry{guest.EntryBatchPolicy},
	})
	tests := []struct {
		name string
		q    guest.QueueState
		want guest.Decision
	}{
		{"empty", guest.QueueState{MaxBatch: 8}, guest.Decision{Wait: time.Millisecond}},
		{"young", guest.QueueState{Queued: 2, OldestWait: 300 * time.Microsecond, Rows: []int64{1, 2}, MaxBatch: 8}, guest.Decision{Wait: 700 * time.Microsecond}},
		{"old", guest.QueueState{Queued: 2, OldestWait: 1500 * time.Microsecond, Rows: []int64{1, 2}, MaxBatch: 8}, guest.Decision{Run: 2}},
		{"full", guest.QueueState{Queued: 3, OldestWait: 10 * time.Microsecond, Rows: []int64{4, 4, 1}, MaxBatch: 8}, guest.Decision{Run: 2}},
		{"exactly full", guest.QueueState{Queued: 2, Rows: []int64{4, 4}, MaxBatch: 8}, guest.Decision{Run: 2}},
		{"oversized", guest.QueueState{Queued: 1, Rows: []int64{20}, MaxBatch: 8}, guest.Decision{Run: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := p.BatchPolicy(context.Background(), tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// A max_wait_us past 2^63 ns waits as long as a Duration can: the product
// wrapped to a negative wait, and the policy ran every queue at once.
func TestLatencyBatchLongMaxWait(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	q := guest.QueueState{Queued: 2, OldestWait: 300 * time.Microsecond, Rows: []int64{1, 2}, MaxBatch: 8}
	for _, v := range []string{"9223372036854775807", "10000000000000000", "9223372036854776"} {
		t.Run(v, func(t *testing.T) {
			p := newPool(t, rt, "guests/examples/latency-batch", guest.PoolConfig{
				Config:  map[string]string{"max_wait_us": v},
				Require: []guest.Entry{guest.EntryBatchPolicy},
			})
			got, err := p.BatchPolicy(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if got.Run != 0 || got.Wait < 100*365*24*time.Hour {
				t.Fatalf("got %+v, want to wait (about 292 years)", got)
			}
		})
	}
}

// mlp is a tiny deterministic perceptron in PyTorch's Linear layout.
type mlp struct {
	in, hidden, out int
	w1, b1, w2, b2  []float32
}

func newMLP(in, hidden, out int) *mlp {
	m := &mlp{in: in, hidden: hidden, out: out}
	v := func(n int, seed float64) []float32 {
		s := make([]float32, n)
		for i := range s {
			s[i] = float32(math.Sin(seed + float64(i)*0.37))
		}
		return s
	}
	m.w1, m.b1, m.w2, m.b2 = v(hidden*in, 1), v(hidden, 2), v(out*hidden, 3), v(out, 4)
	return m
}

// file is m as SafeTensors: the generator of the test model.
func (m *mlp) file(t testing.TB) []byte {
	var b bytes.Buffer
	err := safetensors.Write(&b, []*tensor.Tensor{
		tensor.FromSlice("fc1.weight", tensor.FP32, []int64{int64(m.hidden), int64(m.in)}, m.w1),
		tensor.FromSlice("fc1.bias", tensor.FP32, []int64{int64(m.hidden)}, m.b1),
		tensor.FromSlice("fc2.weight", tensor.FP32, []int64{int64(m.out), int64(m.hidden)}, m.w2),
		tensor.FromSlice("fc2.bias", tensor.FP32, []int64{int64(m.out)}, m.b2),
	}, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func (m *mlp) forward(x []float32) []float32 {
	n := len(x) / m.in
	y := make([]float32, n*m.out)
	h := make([]float32, m.hidden)
	for r := range n {
		for j := range m.hidden {
			s := m.b1[j]
			for k := range m.in {
				s += x[r*m.in+k] * m.w1[j*m.in+k]
			}
			h[j] = max(s, 0)
		}
		for o := range m.out {
			s := m.b2[o]
			for j := range m.hidden {
				s += h[j] * m.w2[o*m.hidden+j]
			}
			y[r*m.out+o] = s
		}
	}
	return y
}

func TestSafetensorsMLP(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	p := newPool(t, rt, "guests/examples/safetensors-mlp", guest.PoolConfig{
		Instances: 2,
		Require:   []guest.Entry{guest.EntryFormatLoad, guest.EntryFormatInfer},
	})
	ctx := context.Background()
	if _, err := p.FormatInfer(ctx, nil); !errorsIs(err, guest.ErrGuest) {
		t.Fatalf("infer before load: %v, want ErrGuest", err)
	}
	m := newMLP(4, 16, 3)
	if err := p.FormatLoad(ctx, m.file(t)); err != nil {
		t.Fatal(err)
	}
	for _, rows := range []int{1, 5, 300} {
		x := make([]float32, rows*m.in)
		for i := range x {
			x[i] = float32(math.Cos(float64(i)))
		}
		out, err := p.FormatInfer(ctx, []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{int64(rows), 4}, x)})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].Name != "y" || !reflect.DeepEqual(out[0].Shape, []int64{int64(rows), 3}) {
			t.Fatalf("rows %d: got %v", rows, out)
		}
		if d := maxDiff(tensor.View[float32](out[0]), m.forward(x)); d > 1e-5 {
			t.Fatalf("rows %d: max difference %g", rows, d)
		}
	}
	if err := p.FormatLoad(ctx, []byte("not safetensors")); !errorsIs(err, guest.ErrGuest) {
		t.Fatalf("bad file: %v, want ErrGuest", err)
	}
}

// wait_us is any INT64 >= 0 (ABI.md): one past 2^63 ns, a guest's "as long
// as you like", overflowed when made a Duration: 2^63-1 µs failed the
// policy as a bad output (a negative wait), and 18446744073709552 µs (2^64
// ns, and a few) became a wait of 384 ns. A negative one stays refused.
func TestBatchPolicyLongWait(t *testing.T) {
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	policy := func(waitUS int64) *guest.Pool {
		list := abi.Encode(nil, []abi.Tensor{
			{Name: "run", DType: abi.DTypeInt64, Data: make([]byte, 8)},
			{Name: "wait_us", DType: abi.DTypeInt64, Data: binary.LittleEndian.AppendUint64(nil, uint64(waitUS))},
		})
		m := &zzModule{}
		zzABIGuest(m)
		const at = 8192
		m.data = [][]byte{zzData(at, list)}
		f := m.addFunc(2, zzCat([]byte{0, 0x42}, zzS(abi.Pack(at, uint32(len(list)))), []byte{0x0b}))
		m.export(guest.EntryBatchPolicy.String(), 0x00, f)
		mod, err := rt.Compile(context.Background(), m.bytes())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mod.Close(context.Background()) })
		p, err := rt.NewPool(context.Background(), mod, guest.PoolConfig{Name: "policy", Require: []guest.Entry{guest.EntryBatchPolicy}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(context.Background()) })
		return p
	}
	q := guest.QueueState{Queued: 1, Rows: []int64{1}, MaxBatch: 8}
	for _, us := range []int64{math.MaxInt64, 18446744073709552, math.MaxInt64 / 1000} {
		d, err := policy(us).BatchPolicy(context.Background(), q)
		if err != nil || d.Run != 0 || d.Wait < time.Duration(math.MaxInt64/1000)*time.Microsecond {
			t.Errorf("wait_us %d: %+v, %v; want the longest wait", us, d, err)
		}
	}
	for _, us := range []int64{-1, -1 << 62} {
		if d, err := policy(us).BatchPolicy(context.Background(), q); !errors.Is(err, guest.ErrBadOutput) {
			t.Errorf("wait_us %d: %+v, %v; want ErrBadOutput", us, d, err)
		}
	}
}

// A model whose layers do not fit each other is refused by FormatLoad:
// it loaded (the deployment Ready) and failed every request in the host's
// matmul or add.
func TestSafetensorsMLPLayersMustFit(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	p := newPool(t, rt, "guests/examples/safetensors-mlp", guest.PoolConfig{
		Require: []guest.Entry{guest.EntryFormatLoad, guest.EntryFormatInfer},
	})
	ctx := context.Background()
	vec := func(name string, shape ...int64) *tensor.Tensor { return tensor.New(name, tensor.FP32, shape...) }
	for name, ts := range map[string][]*tensor.Tensor{
		"fc1.bias":   {vec("fc1.weight", 16, 4), vec("fc1.bias", 15), vec("fc2.weight", 3, 16), vec("fc2.bias", 3)},
		"fc2.weight": {vec("fc1.weight", 16, 4), vec("fc1.bias", 16), vec("fc2.weight", 3, 8), vec("fc2.bias", 3)},
		"fc2.bias":   {vec("fc1.weight", 16, 4), vec("fc1.bias", 16), vec("fc2.weight", 3, 16), vec("fc2.bias", 2)},
	} {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := safetensors.Write(&b, ts, nil); err != nil {
				t.Fatal(err)
			}
			err := p.FormatLoad(ctx, b.Bytes())
			if !errorsIs(err, guest.ErrGuest) || !strings.Contains(err.Error(), "do not fit") {
				_, ierr := p.FormatInfer(ctx, []*tensor.Tensor{vec("x", 1, 4)})
				t.Fatalf("FormatLoad: %v, want ErrGuest, the layers do not fit (infer then: %v)", err, ierr)
			}
		})
	}
}
