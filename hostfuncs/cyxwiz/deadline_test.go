package cyxwiz

import (
	"bytes"
	"context"
	"math/rand"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// progressiveJPEG builds a valid progressive JPEG of w×h pixels and ncomp
// components (1:1 sampling) made of `scans` AC scans per component, each
// one end-of-band run covering every block: a few bytes per scan, each of
// which image/jpeg decodes by visiting every block of the image.
func progressiveJPEG(w, h, ncomp, scans int) []byte {
	var b bytes.Buffer
	seg := func(marker byte, body []byte) {
		b.Write([]byte{0xFF, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
		b.Write(body)
	}
	b.Write([]byte{0xFF, 0xD8})                                  // SOI
	seg(0xDB, append([]byte{0}, bytes.Repeat([]byte{1}, 64)...)) // DQT 0
	sof := []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), byte(ncomp)}
	for c := range ncomp {
		sof = append(sof, byte(c+1), 0x11, 0)
	}
	seg(0xC2, sof) // SOF2: progressive
	dht := append([]byte{0x10, 1}, make([]byte, 15)...)
	seg(0xC4, append(dht, 0xE0)) // AC table 0: one 1-bit code, EOB run 2^14
	blocks := ((w + 7) / 8) * ((h + 7) / 8)
	var data []byte
	var acc, nb uint32
	put := func(v uint32, n int) {
		for i := n - 1; i >= 0; i-- {
			acc, nb = acc<<1|(v>>uint(i))&1, nb+1
			if nb == 8 {
				data = append(data, byte(acc))
				if byte(acc) == 0xFF {
					data = append(data, 0)
				}
				acc, nb = 0, 0
			}
		}
	}
	for left := blocks; left > 0; left -= 32767 {
		put(0, 1)       // EOB14
		put(0x3FFF, 14) // run of 32767 blocks
	}
	for nb != 0 {
		put(1, 1)
	}
	for range scans {
		for c := range ncomp {
			seg(0xDA, []byte{1, byte(c + 1), 0x00, 1, 63, 0}) // SOS: Ss=1 Se=63
			b.Write(data)
		}
	}
	b.Write([]byte{0xFF, 0xD9}) // EOI
	return b.Bytes()
}

// image/jpeg cannot be stopped at the call's deadline, so image_decode
// refuses a progressive JPEG whose scans would take too long: a ~100 KB one
// of many scans kept the host busy for seconds past the deadline.
func TestImageDecodeScanWorkBounded(t *testing.T) {
	src := progressiveJPEG(1024, 1024, 1, 8000)
	s := NewSession(Env{Limits: Limits{MaxBytes: 64 << 20}})
	in := s.Put(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{src}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	s.ctx = ctx
	start := time.Now()
	got := hostImageDecode(ctx, s, nil, stack(in))
	took := time.Since(start)
	s.ctx = nil
	t.Logf("image_decode of a %d-byte JPEG: %d (%s) after %v, deadline 100ms", len(src), got, s.LastError(), took)
	if took > time.Second {
		t.Errorf("image_decode returned %v after start, the call's deadline was 100ms", took)
	}
}

// topk checks the deadline within a row, not only between rows: one long
// row ran to the end.
func TestTopKDeadlineWithinRow(t *testing.T) {
	const n = 1 << 22
	v := make([]float32, n)
	rng := rand.New(rand.NewSource(1))
	for i := range v {
		v[i] = rng.Float32()
	}
	s := NewSession(Env{Limits: Limits{MaxBytes: 64 << 20}})
	in := s.Put(tensor.FromSlice("x", tensor.FP32, []int64{1, n}, v))
	mem := guestMemory(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	s.ctx = ctx
	start := time.Now()
	got := hostTopK(ctx, s, mem, stack(in, 2, 8192))
	took := time.Since(start)
	s.ctx = nil
	t.Logf("topk k=2 of [1, 2^22]: %d (%s) after %v, deadline 50ms", got, s.LastError(), took)
	if took > 500*time.Millisecond {
		t.Errorf("topk returned %v after start, the call's deadline was 50ms", took)
	}
}
