package guest_test

import (
	"bytes"
	"context"
	"image"
	"image/draw"
	"math"
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// ppocr loads the real PP-OCR direction classifier (skipped without
// `make deps`, failed under CI=true).
func ppocr(t testing.TB) loaders.Model {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	path := loadertest.NativeLib(t, "models/ppocr-cls.onnx")
	m, err := onnx.New(onnx.Config{LibraryPath: lib}).Load(context.Background(), path, loaders.Options{IntraOpThreads: 1, InterOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// fastPre is the native preprocessing a Go engineer would write: decode,
// then one fused pass of bilinear resize (half-pixel centres), scale and
// normalisation straight into NCHW.
func fastPre(file []byte, oh, ow int) (*tensor.Tensor, error) {
	img, _, err := image.Decode(bytes.NewReader(file))
	if err != nil {
		return nil, err
	}
	rgba, ok := img.(*image.RGBA)
	if !ok {
		rgba = image.NewRGBA(img.Bounds())
		draw.Draw(rgba, rgba.Bounds(), img, img.Bounds().Min, draw.Src)
	}
	w, h := rgba.Rect.Dx(), rgba.Rect.Dy()
	x := tensor.New("x", tensor.FP32, 1, 3, int64(oh), int64(ow))
	out := tensor.View[float32](x)
	pos := func(i, in, n int) (int, int, float32) {
		f := max((float64(i)+0.5)*float64(in)/float64(n)-0.5, 0)
		l := int(f)
		if l >= in-1 {
			return in - 1, in - 1, 0
		}
		return l, l + 1, float32(f - float64(l))
	}
	for oy := range oh {
		y0, y1, fy := pos(oy, h, oh)
		r0, r1 := rgba.Pix[y0*rgba.Stride:], rgba.Pix[y1*rgba.Stride:]
		for ox := range ow {
			x0, x1, fx := pos(ox, w, ow)
			for c := range 3 {
				a, b := float32(r0[4*x0+c]), float32(r0[4*x1+c])
				d, e := float32(r1[4*x0+c]), float32(r1[4*x1+c])
				top := a + (b-a)*fx
				v := top + (d+(e-d)*fx-top)*fy
				out[c*oh*ow+oy*ow+ox] = (v/255 - 0.5) / 0.5
			}
		}
	}
	return x, nil
}

// nativePost: softmax then top-1 with labels, as cls-post with
// softmax=true.
func nativePost(p *tensor.Tensor, labels []string) ([]string, []float32) {
	v := tensor.View[float32](p)
	n := int(p.Shape[1])
	var names []string
	var scores []float32
	for r := 0; r*n < len(v); r++ {
		row := v[r*n : (r+1)*n]
		m := slices.Max(row)
		var sum float64
		e := make([]float64, n)
		for i, x := range row {
			e[i] = math.Exp(float64(x - m))
			sum += e[i]
		}
		best := 0
		for i := range e {
			if e[i] > e[best] {
				best = i
			}
		}
		names = append(names, labels[best])
		scores = append(scores, float32(e[best]/sum))
	}
	return names, scores
}

type pipeline struct {
	pre, post *guest.Pool
	model     loaders.Model
}

var clsConfig = map[string]string{"labels": "0,180", "softmax": "true"}

func newPipeline(t testing.TB, rt *guest.Runtime, model loaders.Model) *pipeline {
	return &pipeline{
		pre:   newPool(t, rt, "guests/examples/ppocr-pre", guest.PoolConfig{Require: []guest.Entry{guest.EntryPreprocess}}),
		post:  newPool(t, rt, "guests/examples/cls-post", guest.PoolConfig{Config: clsConfig, Require: []guest.Entry{guest.EntryPostprocess}}),
		model: model,
	}
}

func (p *pipeline) run(ctx context.Context, file []byte) ([]*tensor.Tensor, error) {
	x, err := p.pre.Preprocess(ctx, []*tensor.Tensor{bytesTensor("image", file)})
	if err != nil {
		return nil, err
	}
	y, err := p.model.Infer(ctx, x, nil)
	if err != nil {
		return nil, err
	}
	return p.post.Postprocess(ctx, y)
}

func runNative(ctx context.Context, model loaders.Model, file []byte) ([]string, []float32, error) {
	x, err := fastPre(file, 48, 192)
	if err != nil {
		return nil, nil, err
	}
	y, err := model.Infer(ctx, []*tensor.Tensor{x}, nil)
	if err != nil {
		return nil, nil, err
	}
	names, scores := nativePost(y[0], []string{"0", "180"})
	return names, scores, nil
}

func TestPPOCRPipeline(t *testing.T) {
	model := ppocr(t)
	rt := newRuntime(t, guest.Config{})
	p := newPipeline(t, rt, model)
	ctx := context.Background()
	for _, img := range []image.Image{testImage(320, 48), testImage(96, 32), rotate(testImage(200, 40))} {
		file := encodePNG(t, img)
		x, err := fastPre(file, 48, 192)
		if err != nil {
			t.Fatal(err)
		}
		if d := maxDiff(tensor.View[float32](x), nativePre(t, file, 48, 192)); d > 1e-4 {
			t.Fatalf("the two native references differ by %g", d)
		}
		out, err := p.run(ctx, file)
		if err != nil {
			t.Fatal(err)
		}
		names, scores, err := runNative(ctx, model, file)
		if err != nil {
			t.Fatal(err)
		}
		if string(out[0].Strings[0]) != names[0] || math.Abs(float64(tensor.View[float32](out[1])[0]-scores[0])) > 1e-4 {
			t.Fatalf("guest pipeline: %s %v, native: %s %v", out[0].Strings[0], tensor.View[float32](out[1]), names[0], scores[0])
		}
	}
}

func rotate(img *image.NRGBA) *image.NRGBA {
	b := img.Bounds()
	r := image.NewNRGBA(b)
	for y := range b.Dy() {
		for x := range b.Dx() {
			r.Set(b.Dx()-1-x, b.Dy()-1-y, img.At(x, y))
		}
	}
	return r
}
