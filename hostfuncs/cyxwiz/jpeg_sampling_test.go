package cyxwiz

import (
	"bytes"
	"image"
	"image/jpeg"
	"testing"
)

// A baseline 12 MP photo with the bytes FF C2 in a comment (or EXIF, an
// ICC profile: arbitrary binary metadata) decodes under the default 256 MiB:
// only a well-formed frame header counts as a progressive frame.
func TestBaselineJPEGWithFFC2InMetadata(t *testing.T) {
	img := image.NewYCbCr(image.Rect(0, 0, 4000, 3000), image.YCbCrSubsampleRatio420)
	for i := range img.Y {
		img.Y[i] = byte(i)
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 75}); err != nil {
		t.Fatal(err)
	}
	plain := b.Bytes()
	// SOI, then a COM segment whose text holds the bytes FF C2.
	com := []byte{0xFF, 0xFE, 0x00, 0x08, 'x', 0xFF, 0xC2, 'y', 'z', 'w'}
	tagged := append(append(append([]byte{}, plain[:2]...), com...), plain[2:]...)
	for _, src := range [][]byte{plain, tagged} {
		if _, err := jpeg.Decode(bytes.NewReader(src)); err != nil {
			t.Fatalf("image/jpeg refuses the test file: %v", err)
		}
	}
	t.Logf("scanJPEG: plain %+v, with the comment %+v", scanJPEG(plain, 4000, 3000), scanJPEG(tagged, 4000, 3000))
	const limit = 256 << 20 // Limits' default
	hp, allocP, peakP, _, _ := decodeCharged(t, plain, limit)
	if hp <= 0 {
		t.Fatalf("the plain baseline file is refused: %d", hp)
	}
	ht, _, _, _, st := decodeCharged(t, tagged, limit)
	t.Logf("plain: allocated %d MiB, charged %d MiB; with a comment holding FF C2: %d (%s)", allocP>>20, peakP>>20, ht, st.LastError())
	if ht <= 0 {
		t.Fatalf("a baseline JPEG whose comment holds the bytes FF C2 is refused under %d MiB (the same image without it allocates %d MiB)", limit>>20, allocP>>20)
	}
}

// A progressive 12 MP 4:2:0 photo (what many web images are) decodes under
// the default 256 MiB: chroma planes and coefficients are costed at their
// sampling (a quarter of the blocks), not at full resolution.
func TestProgressive420JPEGUnderDefaultLimit(t *testing.T) {
	src := buildJPEG(jpegSpec{w: 4000, h: 3000, comps: 3, sampling: []byte{0x22, 0x11, 0x11}, scans: 6, adobe: -1})
	if _, err := jpeg.Decode(bytes.NewReader(src)); err != nil {
		t.Fatalf("image/jpeg refuses the test file: %v", err)
	}
	h, alloc, _, _, s := decodeCharged(t, src, 1<<40)
	if h <= 0 {
		t.Fatalf("unlimited: %d (%s)", h, s.LastError())
	}
	t.Logf("progressive 4000x3000 4:2:0, 6 scans: allocates %d MiB", alloc>>20)
	const limit = 256 << 20 // Limits' default
	h, _, _, _, s = decodeCharged(t, src, limit)
	if h <= 0 {
		t.Fatalf("refused under the default %d MiB though decoding it allocates %d MiB: %s", limit>>20, alloc>>20, s.LastError())
	}
}
