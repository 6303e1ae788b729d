package cyxwiz

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Tests of results against values computed independently: what a model
// author compares with NumPy, PIL or PyTorch.

func decodePNG(t *testing.T, s *Session, im image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, im); err != nil {
		t.Fatal(err)
	}
	y, err := s.decodeImage(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{b.Bytes()}})
	if err != nil {
		t.Fatal(err)
	}
	return y.Data
}

// image_decode drops alpha and keeps the stored colour, as PIL's
// convert("RGB") does, whatever the PNG's kind: also for a pixel of alpha
// 0 or 1 in a 16-bit or paletted file (it came out black or off by one,
// premultiplied and back). A 16-bit sample keeps its high byte.
func TestImageDecodeStraightColourEveryAlpha(t *testing.T) {
	s := NewSession(Env{})
	for _, a := range []uint8{0, 1, 2, 3, 7, 128, 254, 255} {
		c := color.NRGBA{R: 200, G: 100, B: 51, A: a}
		want := []byte{c.R, c.G, c.B}
		img8 := image.NewNRGBA(image.Rect(0, 0, 1, 1))
		img8.SetNRGBA(0, 0, c)
		img16 := image.NewNRGBA64(image.Rect(0, 0, 1, 1))
		// Low bytes that a premultiplying conversion would round into
		// the high ones.
		img16.SetNRGBA64(0, 0, color.NRGBA64{R: uint16(c.R)<<8 | 0xfe, G: uint16(c.G)<<8 | 0x80, B: uint16(c.B)<<8 | 0x01, A: uint16(a)<<8 | uint16(a)})
		// A 2-entry palette, so that the file is paletted with tRNS.
		pal := image.NewPaletted(image.Rect(0, 0, 2, 1), color.Palette{c, color.NRGBA{1, 2, 3, 255}})
		for _, tc := range []struct {
			kind string
			im   image.Image
		}{{"8-bit RGBA", img8}, {"16-bit RGBA", img16}, {"paletted", pal}} {
			got := decodePNG(t, s, tc.im)[:3]
			if !bytes.Equal(got, want) {
				t.Errorf("%s PNG pixel %v: decoded to %v, want %v", tc.kind, c, got, want)
			}
		}
		s.EndCall()
	}
}

// normalize computes (x·scale − mean[c]) / std[c] in FP32 as ABI.md writes
// it and torchvision's Normalize and NumPy do: a division, not a
// multiplication by a rounded 1/std, which differed in the last bit for
// about a third of the pixel values with ImageNet's constants.
func TestNormalizeDividesByStd(t *testing.T) {
	s := NewSession(Env{})
	mean := []float32{0.485, 0.456, 0.406}
	std := []float32{0.229, 0.224, 0.225}
	const scale = float32(1.0 / 255)
	for _, dt := range []tensor.DType{tensor.Uint8, tensor.FP32} {
		x := tensor.New("x", dt, 3, 256)
		for i := range 3 * 256 {
			if dt == tensor.Uint8 {
				x.Data[i] = byte(i)
			} else {
				tensor.View[float32](x)[i] = float32(i%256) * 1.5
			}
		}
		y, err := s.normalize(x, scale, mean, std, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := tensor.View[float32](y)
		bad := 0
		for c := range 3 {
			for i := range 256 {
				v := float32(i)
				if dt == tensor.FP32 {
					v *= 1.5
				}
				p := float32(v * scale) // rounded, never fused
				want := (p - mean[c]) / std[c]
				if g := got[c*256+i]; g != want {
					if bad < 3 {
						t.Errorf("%v channel %d x=%v: got %v, want %v", dt, c, v, g, want)
					}
					bad++
				}
			}
		}
		if bad > 0 {
			t.Errorf("%v: %d of 768 values differ from (x*scale - mean)/std", dt, bad)
		}
		s.EndCall()
	}
}

// resizeRef is PyTorch's bilinear interpolate(align_corners=False) (and
// OpenCV's INTER_LINEAR on floats), written plainly, on one H×W plane.
func resizeRef(in []float64, h, w, oh, ow int) []float64 {
	src := func(dst, n, on int) (int, int, float64) {
		f := (float64(dst)+0.5)*float64(n)/float64(on) - 0.5
		f = math.Max(f, 0)
		i0 := int(math.Floor(f))
		i1 := min(i0+1, n-1)
		return i0, i1, f - float64(i0)
	}
	out := make([]float64, oh*ow)
	for y := range oh {
		y0, y1, ly := src(y, h, oh)
		for x := range ow {
			x0, x1, lx := src(x, w, ow)
			out[y*ow+x] = (1-ly)*((1-lx)*in[y0*w+x0]+lx*in[y0*w+x1]) + ly*((1-lx)*in[y1*w+x0]+lx*in[y1*w+x1])
		}
	}
	return out
}

func TestResizeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	s := NewSession(Env{})
	sizes := [][4]int{{1, 1, 3, 5}, {2, 2, 1, 1}, {5, 7, 3, 2}, {4, 4, 8, 8}, {3, 10, 7, 23}, {48, 100, 48, 192}, {9, 1, 4, 1}, {6, 6, 6, 6}, {13, 17, 5, 5}}
	for _, sz := range sizes {
		h, w, oh, ow := sz[0], sz[1], sz[2], sz[3]
		for _, layout := range []int{0, 1} {
			const planes = 3
			var x *tensor.Tensor
			if layout == 0 {
				x = tensor.New("x", tensor.Uint8, 1, planes, int64(h), int64(w))
			} else {
				x = tensor.New("x", tensor.Uint8, int64(h), int64(w), planes)
			}
			for i := range x.Data {
				x.Data[i] = byte(rng.IntN(256))
			}
			y, err := s.resize(x, oh, ow, layout)
			if err != nil {
				t.Fatal(err)
			}
			got := tensor.View[float32](y)
			for p := range planes {
				plane := make([]float64, h*w)
				for i := range plane {
					if layout == 0 {
						plane[i] = float64(x.Data[p*h*w+i])
					} else {
						plane[i] = float64(x.Data[i*planes+p])
					}
				}
				want := resizeRef(plane, h, w, oh, ow)
				for i, v := range want {
					g := got[p*oh*ow+i]
					if layout == 1 {
						g = got[i*planes+p]
					}
					if math.Abs(float64(g)-v) > 1e-3 {
						t.Fatalf("%dx%d→%dx%d layout %d plane %d pixel %d: got %v, want %v", h, w, oh, ow, layout, p, i, g, v)
					}
				}
			}
		}
		s.EndCall()
	}
}

// transpose agrees with NumPy's transpose (index arithmetic written
// plainly) for every permutation of a rank-4 tensor, every element width,
// and empty and rank-0 tensors.
func TestTransposeMatchesReference(t *testing.T) {
	s := NewSession(Env{})
	perms := [][]int{{}}
	for range 4 {
		var next [][]int
		for _, p := range perms {
			for i := 0; i <= len(p); i++ {
				q := append(append(append([]int{}, p[:i]...), len(p)), p[i:]...)
				next = append(next, q)
			}
		}
		perms = next
	}
	for _, dt := range []tensor.DType{tensor.Bool, tensor.Int16, tensor.FP16, tensor.FP32, tensor.Int64} {
		for _, shape := range [][]int64{{2, 3, 4, 5}, {1, 3, 1, 2}, {2, 0, 3, 1}} {
			x := tensor.New("x", dt, shape...)
			for i := range x.Data {
				x.Data[i] = byte(i*31 + 7)
			}
			w := dt.Size()
			for _, perm := range perms {
				y, err := s.transpose(x, perm)
				if err != nil {
					t.Fatal(err)
				}
				oshape := make([]int64, 4)
				for i, p := range perm {
					oshape[i] = shape[p]
				}
				if !slices.Equal(y.Shape, oshape) {
					t.Fatalf("%v %v by %v: shape %v, want %v", dt, shape, perm, y.Shape, oshape)
				}
				var idx [4]int64
				for o := range tensor.NumElements(oshape) {
					r := o
					for d := 3; d >= 0; d-- {
						idx[d] = r % oshape[d]
						r /= oshape[d]
					}
					var in [4]int64
					for i, p := range perm {
						in[p] = idx[i]
					}
					src := ((in[0]*shape[1]+in[1])*shape[2]+in[2])*shape[3] + in[3]
					if !bytes.Equal(y.Data[int(o)*w:int(o+1)*w], x.Data[int(src)*w:int(src+1)*w]) {
						t.Fatalf("%v %v by %v: element %v is wrong", dt, shape, perm, idx)
					}
				}
				s.EndCall()
			}
		}
	}
	y, err := s.transpose(ft(nil, 42), nil)
	if err != nil || len(y.Shape) != 0 || tensor.View[float32](y)[0] != 42 {
		t.Fatalf("transpose of a scalar: %v %v", y, err)
	}
}

// matmul and add against float64 sums; softmax against a float64 softmax,
// on rows with large, small and -Inf values; an all -Inf row is NaN, as in
// NumPy and PyTorch.
func TestFloatOpsMatchReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	s := NewSession(Env{})
	for _, sh := range [][3]int{{1, 1, 1}, {3, 4, 5}, {7, 16, 3}, {2, 0, 3}, {0, 3, 2}} {
		m, k, n := sh[0], sh[1], sh[2]
		a, b := make([]float32, m*k), make([]float32, k*n)
		for i := range a {
			a[i] = rng.Float32()*4 - 2
		}
		for i := range b {
			b[i] = rng.Float32()*4 - 2
		}
		y, err := s.matmul(ft([]int64{int64(m), int64(k)}, a...), ft([]int64{int64(k), int64(n)}, b...))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(y.Shape, []int64{int64(m), int64(n)}) {
			t.Fatalf("matmul %v: shape %v", sh, y.Shape)
		}
		got := tensor.View[float32](y)
		for i := range m {
			for j := range n {
				var want float64
				for l := range k {
					want += float64(a[i*k+l]) * float64(b[l*n+j])
				}
				if math.Abs(float64(got[i*n+j])-want) > 1e-4 {
					t.Fatalf("matmul %v [%d,%d]: got %v, want %v", sh, i, j, got[i*n+j], want)
				}
			}
		}
	}
	inf := math.Inf(1)
	nan := math.NaN()
	for _, row := range [][]float64{
		{0, 1, 2}, {1000, 999, -1000}, {-1e30, -1e30 - 1e24, 0}, {88, 89, 90}, {-inf, 0, -inf}, {-inf, -inf}, {3}, {1e-30, 0},
		{nan, 1}, {inf, 1},
	} {
		x := make([]float32, len(row))
		mx := math.Inf(-1)
		for i, v := range row {
			x[i] = float32(v)
			mx = math.Max(mx, float64(x[i]))
		}
		want := make([]float64, len(row))
		var sum float64
		for i := range x {
			want[i] = math.Exp(float64(x[i]) - mx)
			sum += want[i]
		}
		y, err := s.softmax(ft([]int64{1, int64(len(x))}, x...), 1)
		if err != nil {
			t.Fatal(err)
		}
		for i, g := range tensor.View[float32](y) {
			w := want[i] / sum
			if math.IsNaN(w) != math.IsNaN(float64(g)) || math.Abs(float64(g)-w) > 1e-6 {
				t.Errorf("softmax %v: element %d is %v, want %v", row, i, g, w)
			}
		}
	}
	s.EndCall()
}

// affine rounds x·scale before adding bias, as NumPy and every model op
// do: on arm64 the Go compiler fused the two into a multiply-add (one
// rounding), so a node there answered differently in the last bit.
func TestAffineRoundsTwice(t *testing.T) {
	s := NewSession(Env{})
	const scale, bias = float32(1.0 / 255), float32(-0.485)
	x := tensor.New("x", tensor.FP32, 4096)
	in := tensor.View[float32](x)
	for i := range in {
		in[i] = float32(i) * 0.37
	}
	y, err := s.affine(x, scale, bias)
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for i, g := range tensor.View[float32](y) {
		p := float32(in[i] * scale) // rounded, never fused
		if want := p + bias; g != want {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d values differ from float32(x*scale) + bias", bad, len(in))
	}
}

// A paletted PNG, decoded without a conversion to NRGBA, is charged at
// least what decoding it allocates.
func TestPalettedPNGChargeCoversAllocation(t *testing.T) {
	pal := color.Palette{color.NRGBA{200, 100, 51, 0}, color.NRGBA{1, 2, 3, 255}}
	im := image.NewPaletted(image.Rect(0, 0, 1024, 1024), pal)
	for i := range im.Pix {
		im.Pix[i] = byte(i/7) & 1
	}
	var b bytes.Buffer
	if err := png.Encode(&b, im); err != nil {
		t.Fatal(err)
	}
	h, alloc, peak, _, s := decodeCharged(t, b.Bytes(), 256<<20)
	if h <= 0 {
		t.Fatalf("image_decode: %d (%s)", h, s.LastError())
	}
	t.Logf("allocated %.2f MiB, charged at most %.2f MiB", float64(alloc)/(1<<20), float64(peak)/(1<<20))
	if alloc > peak+(1<<20) {
		t.Errorf("image_decode allocated %.2f MiB, charged %.2f MiB", float64(alloc)/(1<<20), float64(peak)/(1<<20))
	}
}
