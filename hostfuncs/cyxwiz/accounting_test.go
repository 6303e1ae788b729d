package cyxwiz

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"image/png"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// After every host function, on success and on every failure path, the
// bytes charged equal what the live handles hold, and never go negative or
// past the limit (random calls under small limits).
func TestAccountingInvariant(t *testing.T) {
	mem := guestMemory(t, 16)
	var pngBuf bytes.Buffer
	png.Encode(&pngBuf, image.NewGray(image.Rect(0, 0, 16, 8)))
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		limit := int64(256 + rng.IntN(8192))
		inputs := map[uint32]bool{}
		var s *Session
		s = NewSession(Env{
			Limits: Limits{MaxBytes: limit, MaxHandles: 3 + rng.IntN(12)},
			Infer: func(ctx context.Context, model string, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
				if rng.IntN(5) == 0 {
					return nil, errors.New("model failed")
				}
				var out []*tensor.Tensor
				for i := range rng.IntN(5) {
					var c *tensor.Tensor
					if len(in) > 0 && rng.IntN(2) == 0 {
						c = in[rng.IntN(len(in))]
					} else {
						c = tensor.New("o", tensor.FP32, int64(1+rng.IntN(64)))
					}
					if rng.IntN(2) == 0 {
						c = &tensor.Tensor{Name: string(make([]byte, i*40)), DType: c.DType, Shape: c.Shape, Data: c.Data, Strings: c.Strings}
					}
					out = append(out, c)
				}
				return out, nil
			},
		})
		put := func() {
			var x *tensor.Tensor
			switch rng.IntN(4) {
			case 0:
				x = tensor.New("in", tensor.Uint8, 4, 4, 3)
			case 1:
				x = &tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{pngBuf.Bytes()}}
			case 2:
				x = &tensor.Tensor{Name: "s", DType: tensor.Bytes, Shape: []int64{3}, Strings: [][]byte{{1}, nil, {2, 3}}}
			default:
				x = tensor.New("in", tensor.FP32, int64(1+rng.IntN(4)), int64(1+rng.IntN(8)))
			}
			if h := s.Put(x); h != 0 {
				inputs[h] = true
			}
		}
		handle := func() uint32 {
			if len(s.tab) == 0 || rng.IntN(10) == 0 {
				return uint32(rng.IntN(5))
			}
			i := rng.IntN(len(s.tab))
			for h := range s.tab {
				if i == 0 {
					return h
				}
				i--
			}
			return 0
		}
		writeShape := func(shape ...int64) uint32 {
			var b []byte
			for _, d := range shape {
				b = binary.LittleEndian.AppendUint64(b, uint64(d))
			}
			mem.Write(1024, b)
			return uint32(len(shape))
		}
		ctx := context.Background()
		for step := range 200 {
			var what string
			var rc int32 = 99
			switch op := rng.IntN(20); op {
			case 0:
				what = "put"
				put()
			case 1:
				what = "tensor_new"
				nameLen := uint32(rng.IntN(200))
				if rng.IntN(2) == 0 {
					n := rng.IntN(6)
					mem.Write(8192, make([]byte, 4*n+rng.IntN(3)))
					rc = hostTensorNew(ctx, s, mem, stack(0, nameLen, uint32(tensor.Bytes), 1024, writeShape(int64(n)), 8192, uint32(4*n)))
				} else {
					r, c := 1+rng.IntN(4), 1+rng.IntN(16)
					rc = hostTensorNew(ctx, s, mem, stack(0, nameLen, uint32(tensor.FP32), 1024, writeShape(int64(r), int64(c)), 8192, uint32(4*r*c)))
				}
			case 2:
				what = "tensor_name"
				rc = hostTensorName(ctx, s, mem, stack(handle(), 0, uint32(rng.IntN(300))))
			case 3:
				what = "tensor_free"
				rc = hostTensorFree(ctx, s, mem, stack(handle()))
			case 4:
				what = "tensor_pin"
				rc = hostTensorPin(ctx, s, mem, stack(handle()))
			case 5:
				what = "affine"
				rc = hostAffine(ctx, s, mem, []uint64{uint64(handle()), 0x3f800000, 0})
			case 6:
				what = "softmax"
				rc = hostSoftmax(ctx, s, mem, stack(handle(), uint32(int32(rng.IntN(3)-2))))
			case 7:
				what = "topk"
				rc = hostTopK(ctx, s, mem, stack(handle(), uint32(1+rng.IntN(4)), 4000))
			case 8:
				what = "resize"
				rc = hostResize(ctx, s, mem, stack(handle(), uint32(1+rng.IntN(6)), uint32(1+rng.IntN(6)), 1))
			case 9:
				what = "matmul"
				rc = hostMatMul(ctx, s, mem, stack(handle(), handle()))
			case 10:
				what = "add"
				rc = hostAdd(ctx, s, mem, stack(handle(), handle()))
			case 11:
				what = "relu"
				rc = hostRelu(ctx, s, mem, stack(handle()))
			case 12:
				what = "transpose"
				mem.Write(1024, binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 1), 0))
				rc = hostTranspose(ctx, s, mem, stack(handle(), 1024, 2))
			case 13:
				what = "cast"
				rc = hostCast(ctx, s, mem, stack(handle(), uint32(1+rng.IntN(14))))
			case 14:
				what = "reshape"
				rc = hostReshape(ctx, s, mem, stack(handle(), 1024, writeShape(-1)))
			case 15:
				what = "concat"
				var hs []byte
				n := rng.IntN(4)
				for range n {
					hs = binary.LittleEndian.AppendUint32(hs, handle())
				}
				mem.Write(3072, hs)
				rc = hostConcat(ctx, s, mem, stack(3072, uint32(n)))
			case 16:
				what = "image_decode"
				rc = hostImageDecode(ctx, s, mem, stack(handle()))
			case 17:
				what = "infer"
				var hs []byte
				n := rng.IntN(3)
				for range n {
					hs = binary.LittleEndian.AppendUint32(hs, handle())
				}
				mem.Write(3072, hs)
				rc = hostInfer(ctx, s, mem, stack(0, 0, 3072, uint32(n), 4000, uint32(rng.IntN(5))))
			case 18:
				what = "normalize"
				mem.Write(2048, binary.LittleEndian.AppendUint32(nil, math.Float32bits(1)))
				rc = hostNormalize(ctx, s, mem, []uint64{uint64(handle()), 0x3f800000, 2048, 2048, 1, uint64(math.MaxUint32)})
			case 19:
				what = "end call"
				s.EndCall()
				clear(inputs)
				put()
			}
			_ = rc
			var sum int64
			for h, sl := range s.tab {
				sum += sl.bytes
				if !inputs[h] && sl.bytes < size(sl.t)+int64(len(sl.t.Name)) {
					t.Fatalf("seed %d step %d (%s): handle %d holds %d+%d bytes, charged %d", seed, step, what, h, size(sl.t), len(sl.t.Name), sl.bytes)
				}
				if sl.pinned && sl.bytes < size(sl.t)+int64(len(sl.t.Name)) {
					t.Fatalf("seed %d step %d (%s): pinned handle %d holds %d+%d bytes, charged %d", seed, step, what, h, size(sl.t), len(sl.t.Name), sl.bytes)
				}
			}
			if s.pending != nil {
				sum += s.pending.bytes // outputs kept for an infer retry
			}
			if sum != s.used || s.used < 0 || s.used > limit {
				t.Fatalf("seed %d step %d (%s): used %d, live handles hold %d, limit %d (%s)", seed, step, what, s.used, sum, limit, s.LastError())
			}
		}
	}
}
