package cyxwiz

import (
	"bytes"
	"image"
	"image/png"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
)

// image_decode charges at least what decoding allocates (allocated ≤ peak
// charge + 1 MiB), including image/jpeg's CMYK/YCCK conversion (a second
// 4-byte-a-pixel image), its RGB conversion of a 3-component JPEG with
// component ids 'R','G','B' or Adobe transform 0, the MCU padding of planes
// and coefficients (8× for a 1-pixel-wide image), and image/png's Adam7
// passes (a second copy of the image).
func TestImageDecodeChargeCoversAllocation(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  []byte
	}{
		{"baseline CMYK JPEG 1024x1024", buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 4, baseline: true, adobe: 0})},
		{"progressive CMYK JPEG 1024x1024", buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 4, scans: 4, adobe: 0})},
		{"progressive YCCK JPEG 1024x1024", buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 4, scans: 4, adobe: 2})},
		{"progressive RGB JPEG 1024x1024", buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 3, scans: 3, adobe: -1, ids: []byte{'R', 'G', 'B'}})},
		{"progressive JPEG 1x65535", buildJPEG(jpegSpec{w: 1, h: 65535, comps: 3, scans: 3, adobe: -1})},
		{"baseline 4:1:0 JPEG 1x65535", buildJPEG(jpegSpec{w: 1, h: 65535, comps: 3, sampling: []byte{0x42, 0x11, 0x11}, baseline: true, adobe: -1})},
		{"interlaced 16-bit RGBA PNG 1024x1024", pngAdam7(1024, 1024, 6, 16)},
		{"interlaced 16-bit RGB PNG 1024x1024", pngAdam7(1024, 1024, 2, 16)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, alloc, peak, _, s := decodeCharged(t, tc.src, 256<<20)
			if h <= 0 {
				t.Fatalf("image_decode: %d (%s)", h, s.LastError())
			}
			t.Logf("allocated %.2f MiB, charged at most %.2f MiB", float64(alloc)/(1<<20), float64(peak)/(1<<20))
			if alloc > peak+(1<<20) {
				t.Errorf("image_decode allocated %.2f MiB, charged %.2f MiB", float64(alloc)/(1<<20), float64(peak)/(1<<20))
			}
		})
	}
}

// A PNG is charged by its colour type: an 8-bit grayscale PNG of
// 2048×2048 (image.Gray, 1 byte a pixel, no conversion) needs ~16 MiB with
// its output and fits under 48 MiB (a flat 12 bytes a pixel made it
// ENOMEM). Large grayscale document scans are what an OCR guest decodes.
func TestGrayPNGChargedByColourType(t *testing.T) {
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewGray(image.Rect(0, 0, 2048, 2048))); err != nil {
		t.Fatal(err)
	}
	h, alloc, peak, _, s := decodeCharged(t, b.Bytes(), 48<<20)
	t.Logf("image_decode of a 2048×2048 8-bit gray PNG under 48 MiB: %d (%s); allocated %.1f MiB, charged at most %.1f MiB",
		h, s.LastError(), float64(alloc)/(1<<20), float64(peak)/(1<<20))
	if h == int32(abi.ENOMEM) {
		t.Errorf("2048×2048 gray PNG (~16 MiB to decode) refused with ENOMEM under a 48 MiB limit")
	}
}
