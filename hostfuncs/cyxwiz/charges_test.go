package cyxwiz

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Working memory is given back when its operation returns (the FP32 copy
// of a UINT8 tensor in affine and normalize; image_decode's decoder
// buffers), and a failed operation holds nothing: a guest that frees
// everything it made does not run out of memory.
func TestScratchChargesRefunded(t *testing.T) {
	mem := guestMemory(t, 1)
	const limit = 4 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})
	// A 256 KiB UINT8 input (an image from the request): affine makes a
	// 1 MiB FP32 result, freed each time.
	in := s.Put(tensor.New("px", tensor.Uint8, 1<<18))
	for i := range 8 {
		y := hostAffine(context.Background(), s, mem, []uint64{uint64(in), 0x3f800000, 0})
		if y <= 0 {
			t.Errorf("affine %d of a 256 KiB UINT8 tensor, every earlier result freed: %d (%s); %d bytes charged, 0 held",
				i, y, s.LastError(), s.used)
			break
		}
		hostTensorFree(context.Background(), s, mem, stack(uint32(y)))
	}
	s.EndCall()

	// image_decode, then free the image: the 8 bytes a pixel charged for
	// the decoder's buffer stay charged.
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 256, 256))); err != nil {
		t.Fatal(err)
	}
	img := s.Put(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{buf.Bytes()}})
	for i := range 16 {
		y := hostImageDecode(context.Background(), s, mem, stack(img))
		if y <= 0 {
			t.Errorf("image_decode %d of a 256×256 PNG (192 KiB of pixels), every earlier result freed: %d (%s)",
				i, y, s.LastError())
			break
		}
		hostTensorFree(context.Background(), s, mem, stack(uint32(y)))
	}
	s.EndCall()

	// An operation that fails after allocating keeps its result's charge.
	x := s.Put(tensor.New("x", tensor.FP32, 1, 1<<18)) // 1 MiB, one channel along axis 0
	mem.Write(0, []byte{0, 0, 0, 0})
	for i := range 8 {
		// normalize with std = 0: EINVAL, found after the result is charged.
		if got := hostNormalize(context.Background(), s, mem, []uint64{uint64(x), 0x3f800000, 0, 0, 1, 0}); got != int32(abi.EINVAL) {
			t.Errorf("normalize %d with std 0: %d (%s), want EINVAL", i, got, s.LastError())
			break
		}
	}
	if s.used != 0 {
		t.Errorf("%d bytes charged after failed normalize calls that hold nothing", s.used)
	}
}
