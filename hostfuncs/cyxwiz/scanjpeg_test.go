package cyxwiz

import (
	"bytes"
	"context"
	"image"
	"image/jpeg"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// No arrangement of segments hides a progressive frame from scanJPEG: a
// walk of the markers that differed from image/jpeg's (which skips
// "\xff\x00" after a segment) could be sent 64 KiB ahead to a fake baseline
// SOF0 in a comment, skipping the scan bound and undercharging 4×.
func TestScanJPEGSeesHiddenProgressive(t *testing.T) {
	// 1 MP, 300 scans: past the 16 scans × 16 MP bound, refused as it is.
	plain := buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 1, scans: 300, adobe: -1})
	hidden := hideProgressive(plain)
	for _, src := range [][]byte{plain, hidden} {
		if _, err := jpeg.Decode(bytes.NewReader(src)); err != nil {
			t.Fatalf("image/jpeg refuses the test file: %v", err)
		}
	}
	t.Logf("scanJPEG: plain %+v, hidden %+v", scanJPEG(plain, 1024, 1024), scanJPEG(hidden, 1024, 1024))
	hp, _, _, tookP, sp := decodeCharged(t, plain, 64<<20)
	hh, _, _, tookH, sh := decodeCharged(t, hidden, 64<<20)
	t.Logf("image_decode: plain %d (%s) in %v; hidden %d (%s) in %v", hp, sp.LastError(), tookP, hh, sh.LastError(), tookH)
	if hp != int32(abi.EINVAL) {
		t.Fatalf("plain file: %d, want EINVAL", hp)
	}
	if hh != int32(abi.EINVAL) {
		t.Errorf("the same progressive JPEG of 300 scans with \"\\xff\\x00\" after its SOI: decoded (%d) in %v, want EINVAL", hh, tookH)
	}

	// Memory: a 3-component 1 MP progressive JPEG allocates ~22 MiB; under
	// an 8 MiB limit it is ENOMEM as it is, and decodes when hidden.
	prog3 := buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 3, scans: 3, adobe: -1})
	h, alloc, peak, _, s := decodeCharged(t, hideProgressive(prog3), 8<<20)
	t.Logf("hidden 3-component progressive 1024×1024 under 8 MiB: %d (%s), allocated %.1f MiB, charged at most %.1f MiB",
		h, s.LastError(), float64(alloc)/(1<<20), float64(peak)/(1<<20))
	if h > 0 && alloc > 8<<20 {
		t.Errorf("decoded under an 8 MiB limit, allocating %.1f MiB (charged %.1f MiB)", float64(alloc)/(1<<20), float64(peak)/(1<<20))
	}
	_ = image.Decode
}

// The scan bound counts padded pixels, since image/jpeg's work is per
// block: a 53 KB 1×65535 JPEG of 4096 refinement scans, under a bound on
// plain pixels, held the host ~2.3 s past a 100 ms deadline.
func TestScanBoundCountsPaddedPixels(t *testing.T) {
	src := buildJPEG(jpegSpec{w: 1, h: 65535, comps: 1, scans: 4096, refine: true, adobe: -1})
	if int64(scanJPEG(src, 1, 65535).scans)*65535 > maxScanWork {
		t.Fatal("test file past the bound")
	}
	s := NewSession(Env{Limits: Limits{MaxBytes: 64 << 20}})
	in := s.Put(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{src}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	s.ctx = ctx
	start := time.Now()
	got := hostImageDecode(ctx, s, nil, stack(in))
	took := time.Since(start)
	s.ctx = nil
	t.Logf("image_decode of a %d-byte 1×65535 JPEG of 4096 refinement scans: %d (%s) after %v, deadline 100ms", len(src), got, s.LastError(), took)
	if took > time.Second {
		t.Errorf("image_decode returned %v after start, the call's deadline was 100ms", took)
	}
}
