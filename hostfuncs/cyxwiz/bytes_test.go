package cyxwiz

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/tetratelabs/wazero/api"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// newEmptyStrings calls tensor_new for a BYTES tensor [n] of n empty
// elements: 4n bytes of guest data (one zero u32 length each).
func newEmptyStrings(s *Session, mem api.Memory, n int) int32 {
	mem.Write(0, []byte("s"))
	var shape [8]byte
	binary.LittleEndian.PutUint64(shape[:], uint64(n))
	mem.Write(1024, shape[:])
	mem.Write(4096, make([]byte, 4*n))
	return hostTensorNew(context.Background(), s, mem, stack(0, 1, uint32(tensor.Bytes), 1024, 1, 4096, uint32(4*n)))
}

func heapAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BYTES tensors are charged a slice header per element besides their
// bytes: concat of one handle listed many times, of empty elements, was
// charged 0 while allocating 24 bytes per element.
func TestConcatBytesElementsCharged(t *testing.T) {
	mem := guestMemory(t, 8)
	const limit = 1 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})
	h := newEmptyStrings(s, mem, 16384) // 64 KiB of guest data, charged
	if h <= 0 {
		t.Fatalf("tensor_new: %d (%s)", h, s.LastError())
	}
	const parts = 64
	hs := make([]byte, 4*parts)
	for i := range parts {
		binary.LittleEndian.PutUint32(hs[4*i:], uint32(h))
	}
	mem.Write(256, hs)
	used := s.used
	before := heapAfterGC()
	c := hostConcat(context.Background(), s, mem, stack(256, parts))
	after := heapAfterGC()
	if c < 0 {
		return // refused: fine
	}
	ct, _ := s.Get(uint32(c))
	held := int64(after) - int64(before)
	t.Logf("concat result %v holds ~%d MiB of host memory; charged %d bytes (limit %d)", ct.Shape, held>>20, s.used-used, limit)
	if held > 2*limit {
		t.Errorf("concat of %d × 16384 empty BYTES elements: %d MiB of host memory held under a %d MiB limit, %d bytes charged",
			parts, held>>20, limit>>20, s.used-used)
	}
	runtime.KeepAlive(s)
}

// The same across calls: a pinned reshape of a BYTES tensor of empty
// elements, whose source is freed, is charged its element list.
func TestPinnedBytesReshapeCharged(t *testing.T) {
	mem := guestMemory(t, 8)
	const limit = 1 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})
	before := heapAfterGC()
	const n = 32768
	var shape [8]byte
	binary.LittleEndian.PutUint64(shape[:], n)
	calls := 0
	for range 32 {
		h := newEmptyStrings(s, mem, n) // 128 KiB of guest data
		if h <= 0 {
			break
		}
		mem.Write(512, shape[:])
		r := hostReshape(context.Background(), s, mem, stack(uint32(h), 512, 1))
		hostTensorFree(context.Background(), s, mem, stack(uint32(h)))
		if r <= 0 || hostTensorPin(context.Background(), s, mem, stack(uint32(r))) != 0 {
			break
		}
		s.EndCall()
		calls++
	}
	held := int64(heapAfterGC()) - int64(before)
	t.Logf("%d calls; %d pinned handles hold ~%d MiB; charged %d bytes (limit %d)", calls, s.Handles(), held>>20, s.used, limit)
	if held > 2*limit {
		t.Errorf("pinned reshapes of BYTES tensors hold %d MiB of host memory under a %d MiB limit (%d bytes charged)",
			held>>20, limit>>20, s.used)
	}
	runtime.KeepAlive(s)
}
