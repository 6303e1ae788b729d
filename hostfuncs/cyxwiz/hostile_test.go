package cyxwiz

import (
	"bytes"
	"context"
	"encoding/binary"
	"image/jpeg"
	"log/slog"
	"math/rand"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// repeatBaselineScan returns the one-scan baseline JPEG src with its scan
// repeated n times: image/jpeg decodes each again, an inverse DCT of every
// block, for two bits a block of file.
func repeatBaselineScan(src []byte, n int) []byte {
	i := bytes.Index(src, []byte{0xFF, 0xDA})
	var b bytes.Buffer
	b.Write(src[:i])
	for range n {
		b.Write(src[i : len(src)-2])
	}
	b.Write(src[len(src)-2:]) // EOI
	return b.Bytes()
}

// The scan bound holds for baseline JPEGs too: a ~1 MB baseline 1 MP JPEG
// of 300 scans held the host about a second past a 100 ms deadline (a
// 64 MiB one, a minute), since image/jpeg cannot be stopped.
func TestImageDecodeBaselineScanWorkBounded(t *testing.T) {
	src := repeatBaselineScan(buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 1, baseline: true, adobe: -1}), 300)
	if _, err := jpeg.Decode(bytes.NewReader(src)); err != nil {
		t.Fatalf("image/jpeg refuses the test file: %v", err)
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
	t.Logf("image_decode of a %d-byte baseline JPEG of 300 scans: %d (%s) after %v, deadline 100ms", len(src), got, s.LastError(), took)
	if got != int32(abi.EINVAL) {
		t.Errorf("image_decode: %d after %v, want EINVAL (more work than 16 scans of 16 MP)", got, took)
	}
	// A baseline JPEG of a scan per component still decodes.
	three := buildJPEG(jpegSpec{w: 1024, h: 1024, comps: 3, baseline: true, adobe: -1})
	if h, _, _, _, s := decodeCharged(t, repeatBaselineScan(three, 3), 64<<20); h <= 0 {
		t.Errorf("a 1 MP baseline JPEG of 3 scans: %d (%s)", h, s.LastError())
	}
}

// Long element loops check the deadline as they go: softmax checked it
// only between rows (one row of 2^26 took a second), transpose and cast
// never (a transpose of 256 MiB took 1.6 s), and the host ran on past the
// guest call's deadline.
func TestLongOperationsStopAtDeadline(t *testing.T) {
	mem := guestMemory(t, 1)
	perm := make([]byte, 16)
	perm[0] = 1 // [1, 0]
	mem.Write(0, perm)
	const n = 1 << 24
	for _, tt := range []struct {
		name string
		in   *tensor.Tensor
		call func(s *Session, h uint32) int32
	}{
		{"softmax of one row", tensor.New("x", tensor.FP32, 1, n), func(s *Session, h uint32) int32 {
			return hostSoftmax(s.ctx, s, mem, stack(h, 1))
		}},
		{"softmax along axis 0 of short columns", tensor.New("x", tensor.FP32, 4, n/4), func(s *Session, h uint32) int32 {
			return hostSoftmax(s.ctx, s, mem, stack(h, 0))
		}},
		{"transpose", tensor.New("x", tensor.Uint8, 1<<13, 1<<13), func(s *Session, h uint32) int32 {
			return hostTranspose(s.ctx, s, mem, stack(h, 0, 2))
		}},
		{"cast to an integer", tensor.New("x", tensor.FP32, n), func(s *Session, h uint32) int32 {
			return hostCast(s.ctx, s, mem, stack(h, uint32(tensor.Int32)))
		}},
		{"cast between integers", tensor.New("x", tensor.Int32, n), func(s *Session, h uint32) int32 {
			return hostCast(s.ctx, s, mem, stack(h, uint32(tensor.Int64)))
		}},
		{"cast to FP32", tensor.New("x", tensor.Int32, n), func(s *Session, h uint32) int32 {
			return hostCast(s.ctx, s, mem, stack(h, uint32(tensor.FP32)))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSession(Env{})
			h := s.Put(tt.in)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
			defer cancel()
			s.ctx = ctx
			start := time.Now()
			got := tt.call(s, h)
			took := time.Since(start)
			s.ctx = nil
			t.Logf("%d (%s) after %v, deadline 5ms", got, s.LastError(), took)
			if got != int32(abi.EIO) {
				t.Errorf("%s of %v: %d after %v, want EIO (the call's deadline passed)", tt.name, tt.in.Shape, got, took)
			}
			if s.used != 0 {
				t.Errorf("%d bytes still charged after a stopped operation", s.used)
			}
		})
	}
}

// Empty log messages count against a call's log budget too: each is a
// record in the node's log, and counting only their text let a guest
// write records without end until its deadline.
func TestLogEmptyMessagesBounded(t *testing.T) {
	mem := guestMemory(t, 1)
	h := &countingHandler{}
	s := NewSession(Env{Log: slog.New(h)})
	for range 100_000 {
		if rc := hostLog(context.Background(), s, mem, stack(0, 0, 0)); rc != 0 {
			t.Fatalf("log: %d", rc)
		}
	}
	s.EndCall()
	t.Logf("100000 empty messages: %d records, %d warnings", h.records, h.warnings)
	if h.records == 0 || h.records > 64<<10/logRecordBytes+1 {
		t.Errorf("100000 empty messages in a call logged %d records, want 1 to %d", h.records, 64<<10/logRecordBytes+1)
	}
	if h.warnings != 1 {
		t.Errorf("%d warnings about dropped messages, want 1", h.warnings)
	}
}

// tensor_read of a BYTES tensor encodes it into the guest's buffer
// directly: it made a host copy first, charged nowhere, also for an out
// buffer outside guest memory (EFAULT), so a guest could make the host
// allocate a tensor's size at every call.
func TestTensorReadBytesAllocatesNothing(t *testing.T) {
	mem := guestMemory(t, 127) // ~8 MiB
	s := NewSession(Env{})
	elem := bytes.Repeat([]byte("ab"), 2<<20) // 4 MiB
	h := s.Put(&tensor.Tensor{Name: "s", DType: tensor.Bytes, Shape: []int64{2}, Strings: [][]byte{elem, []byte("xyz")}})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 8 {
		if got := hostTensorRead(context.Background(), s, mem, stack(h, 6<<20, 0xffff_ffff)); got != int32(abi.EFAULT) {
			t.Fatalf("tensor_read into a buffer past guest memory: %d, want EFAULT", got)
		}
	}
	got := hostTensorRead(context.Background(), s, mem, stack(h, 16, 5<<20))
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("9 reads of a %d MiB BYTES tensor: host allocated %d KiB", len(elem)>>20, alloc>>10)
	want := abi.AppendStrings(nil, [][]byte{elem, []byte("xyz")})
	if got != int32(len(want)) {
		t.Fatalf("tensor_read: %d (%s), want %d", got, s.LastError(), len(want))
	}
	if b, _ := mem.Read(16, uint32(len(want))); !bytes.Equal(b, want) {
		t.Error("tensor_read wrote other bytes than the encoded elements")
	}
	if alloc > 1<<20 {
		t.Errorf("9 reads of a 4 MiB BYTES tensor allocated %d MiB on the host", alloc>>20)
	}
}

// resize reads UINT8 pixels as they are: it copied the whole image to FP32
// first, charged at 4 bytes a pixel, so an image of a quarter of the limit
// (a decoded 24 MP photo is 72 MiB of 256) could not be resized at all. The
// result is the same as for the image in FP32.
func TestResizeUint8NeedsNoCopy(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{Limits: Limits{MaxBytes: 64 << 20}})
	big := tensor.New("img", tensor.Uint8, 2048, 3072, 3) // 18 MiB
	if got := hostResize(context.Background(), s, mem, stack(s.Put(big), 48, 192, 1)); got <= 0 {
		t.Errorf("resize of an 18 MiB UINT8 image to 48×192 under a 64 MiB limit: %d (%s)", got, s.LastError())
	}
	rng := rand.New(rand.NewSource(1))
	for _, tt := range []struct {
		shape       []int64
		oh, ow, lay int
	}{{[]int64{37, 53, 3}, 48, 192, 1}, {[]int64{37, 53, 3}, 5, 7, 1}, {[]int64{2, 3, 17, 29}, 40, 11, 0}} {
		u8 := tensor.New("u8", tensor.Uint8, tt.shape...)
		rng.Read(u8.Data)
		f := tensor.New("f", tensor.FP32, tt.shape...)
		for i, v := range u8.Data {
			tensor.View[float32](f)[i] = float32(v)
		}
		a, errA := s.resize(u8, tt.oh, tt.ow, tt.lay)
		b, errB := s.resize(f, tt.oh, tt.ow, tt.lay)
		if errA != nil || errB != nil {
			t.Fatalf("resize of %v: %v, %v", tt.shape, errA, errB)
		}
		if !bytes.Equal(a.Data, b.Data) || !slices.Equal(a.Shape, b.Shape) {
			t.Errorf("resize of UINT8 %v to %dx%d differs from resize of the same pixels in FP32", tt.shape, tt.oh, tt.ow)
		}
	}
}

// resize and matmul round every product before adding it, as affine does:
// where the compiler fuses a multiply and an add (arm64, and amd64 built
// with GOAMD64=v3), their results differed in the last bit from a node's
// without, so two nodes answered the same request differently. The
// references round each step explicitly; run with GOAMD64=v3 (or on arm64)
// to see the fused code fail.
func TestResizeAndMatMulSameBitsEverywhere(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	s := NewSession(Env{})
	const h, w, oh, ow = 13, 17, 29, 31
	x := tensor.New("x", tensor.FP32, 1, 1, h, w)
	in := tensor.View[float32](x)
	for i := range in {
		in[i] = rng.Float32()*200 - 100
	}
	y, err := s.resize(x, oh, ow, 0)
	if err != nil {
		t.Fatal(err)
	}
	weights := func(n, on int) (lo, hi []int, wt []float32) {
		scale := float64(n) / float64(on)
		for i := range on {
			f := max(float64((float64(i)+0.5)*scale)-0.5, 0)
			l := int(f)
			if l >= n-1 {
				lo, hi, wt = append(lo, n-1), append(hi, n-1), append(wt, 0)
				continue
			}
			lo, hi, wt = append(lo, l), append(hi, l+1), append(wt, float32(f-float64(l)))
		}
		return lo, hi, wt
	}
	x0, x1, wx := weights(w, ow)
	y0, y1, wy := weights(h, oh)
	lerp := func(a, b, f float32) float32 { d := float32((b - a) * f); return a + d }
	bad := 0
	for oy := range oh {
		for ox := range ow {
			top := lerp(in[y0[oy]*w+x0[ox]], in[y0[oy]*w+x1[ox]], wx[ox])
			bot := lerp(in[y1[oy]*w+x0[ox]], in[y1[oy]*w+x1[ox]], wx[ox])
			if want := lerp(top, bot, wy[oy]); tensor.View[float32](y)[oy*ow+ox] != want {
				bad++
			}
		}
	}
	if bad > 0 {
		t.Errorf("resize: %d of %d values differ from the product-rounded reference", bad, oh*ow)
	}

	const m, k, n = 7, 33, 9
	a, b := tensor.New("a", tensor.FP32, m, k), tensor.New("b", tensor.FP32, k, n)
	for _, v := range [][]float32{tensor.View[float32](a), tensor.View[float32](b)} {
		for i := range v {
			v[i] = rng.Float32()*2 - 1
		}
	}
	c, err := s.matmul(a, b)
	if err != nil {
		t.Fatal(err)
	}
	av, bv, got := tensor.View[float32](a), tensor.View[float32](b), tensor.View[float32](c)
	bad = 0
	for i := range m {
		for j := range n {
			var sum float32
			for l := range k {
				p := float32(av[i*k+l] * bv[l*n+j])
				sum += p
			}
			if got[i*n+j] != sum {
				bad++
			}
		}
	}
	if bad > 0 {
		t.Errorf("matmul: %d of %d values differ from the product-rounded reference", bad, m*n)
	}
}

// tensor_new of a BYTES tensor allocates what it charges (its data, and a
// slice header an element): it allocated each element apart, rounded up to
// Go's allocation sizes, after a first list of them, about twice the
// charge for one-byte elements.
func TestTensorNewBytesAllocatesItsCharge(t *testing.T) {
	const n = 1 << 20
	mem := guestMemory(t, 100) // 6.25 MiB
	data := make([]byte, 0, 5*n)
	for i := range n {
		data = append(data, 1, 0, 0, 0, byte(i))
	}
	mem.Write(4096, data)
	var shape [8]byte
	binary.LittleEndian.PutUint64(shape[:], n)
	mem.Write(1024, shape[:])
	mem.Write(0, []byte("s"))
	s := NewSession(Env{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	h := hostTensorNew(context.Background(), s, mem, stack(0, 1, uint32(tensor.Bytes), 1024, 1, 4096, uint32(len(data))))
	runtime.ReadMemStats(&after)
	if h <= 0 {
		t.Fatalf("tensor_new: %d (%s)", h, s.LastError())
	}
	alloc := int64(after.TotalAlloc - before.TotalAlloc)
	t.Logf("BYTES [%d] of one byte each: charged %d KiB, allocated %d KiB", n, s.used>>10, alloc>>10)
	if alloc > s.used+64<<10 {
		t.Errorf("tensor_new allocated %d KiB, charged %d KiB", alloc>>10, s.used>>10)
	}
	x, _ := s.Get(uint32(h))
	for _, i := range []int{0, 1, n - 1} {
		if len(x.Strings[i]) != 1 || x.Strings[i][0] != byte(i) {
			t.Fatalf("element %d: %q", i, x.Strings[i])
		}
	}
}

// tensor_pin of a BYTES input allocates what it charges: it copied each
// element apart, rounded up to Go's allocation sizes, a third more than
// the charge for one-byte elements.
func TestTensorPinBytesAllocatesItsCharge(t *testing.T) {
	const n = 1 << 20
	elems := make([][]byte, n)
	for i := range elems {
		elems[i] = []byte{byte(i)}
	}
	s := NewSession(Env{})
	h := s.Put(&tensor.Tensor{Name: "s", DType: tensor.Bytes, Shape: []int64{n}, Strings: elems})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rc := hostTensorPin(context.Background(), s, nil, stack(h))
	runtime.ReadMemStats(&after)
	if rc != 0 {
		t.Fatalf("tensor_pin: %d (%s)", rc, s.LastError())
	}
	alloc := int64(after.TotalAlloc - before.TotalAlloc)
	t.Logf("pin of BYTES [%d] of one byte each: charged %d KiB, allocated %d KiB", n, s.used>>10, alloc>>10)
	if alloc > s.used+64<<10 {
		t.Errorf("tensor_pin allocated %d KiB, charged %d KiB", alloc>>10, s.used>>10)
	}
	x, _ := s.Get(h)
	elems[n-1][0] = 0 // the request's memory, reused
	for _, i := range []int{0, 1, n - 1} {
		if len(x.Strings[i]) != 1 || x.Strings[i][0] != byte(i) {
			t.Fatalf("pinned element %d: %q", i, x.Strings[i])
		}
	}
}
