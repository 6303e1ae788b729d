package cyxwiz

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"runtime"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// image_decode charges at least what decoding allocates: a progressive
// JPEG keeps 256 bytes of coefficients per 8×8 block and component besides
// the YCbCr image, a 16-bit PNG 8 bytes a pixel, and both are converted
// into 8-bit NRGBA.
func TestImageDecodeChargesWhatItAllocates(t *testing.T) {
	var png16 bytes.Buffer
	im := image.NewNRGBA64(image.Rect(0, 0, 1024, 1024))
	for i := range im.Pix {
		im.Pix[i] = byte(i * 7) // not all opaque: stays NRGBA64 in the file
	}
	if err := png.Encode(&png16, im); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		src  []byte
	}{
		{"progressive JPEG, 3 components", progressiveJPEG(1024, 1024, 3, 1)},
		{"16-bit RGBA PNG", png16.Bytes()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSession(Env{Limits: Limits{MaxBytes: 256 << 20}})
			in := s.Put(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{tc.src}})
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			h := hostImageDecode(context.Background(), s, nil, stack(in))
			runtime.ReadMemStats(&after)
			if h <= 0 {
				t.Fatalf("image_decode: %d (%s)", h, s.LastError())
			}
			alloc := int64(after.TotalAlloc - before.TotalAlloc)
			t.Logf("1024×1024: allocated %.1f MiB, charged %.1f MiB", float64(alloc)/(1<<20), float64(s.peak)/(1<<20))
			if alloc > s.peak+(1<<20) {
				t.Errorf("image_decode allocated %.1f MiB, charged %.1f MiB", float64(alloc)/(1<<20), float64(s.peak)/(1<<20))
			}
		})
	}
}

// The same translucent pixel decodes to the same RGB whether the PNG is
// 8-bit, 16-bit or paletted (alpha dropped, colour not premultiplied).
func TestImageDecodeAlphaSameForEveryPNG(t *testing.T) {
	c := color.NRGBA{R: 200, G: 100, B: 50, A: 128}
	img8 := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	img8.Set(0, 0, c)
	img16 := image.NewNRGBA64(image.Rect(0, 0, 1, 1))
	img16.Set(0, 0, c)
	pal := image.NewPaletted(image.Rect(0, 0, 1, 1), color.Palette{c})
	s := NewSession(Env{})
	var got [][]byte
	for _, im := range []image.Image{img8, img16, pal} {
		var b bytes.Buffer
		if err := png.Encode(&b, im); err != nil {
			t.Fatal(err)
		}
		y, err := s.decodeImage(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{b.Bytes()}})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, y.Data)
	}
	t.Logf("pixel (200,100,50, alpha 128): 8-bit RGBA PNG → %v, 16-bit RGBA PNG → %v, paletted PNG → %v", got[0], got[1], got[2])
	if !bytes.Equal(got[0], got[1]) || !bytes.Equal(got[0], got[2]) {
		t.Errorf("the same pixel decodes to %v (8-bit), %v (16-bit), %v (paletted)", got[0], got[1], got[2])
	}
}
