package cyxwiz

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Result names are charged: topk's x.Name+":values" and ":indices" are two
// new strings of the source name's length, which were free.
func TestTopKNamesCharged(t *testing.T) {
	mem := guestMemory(t, 20)
	const limit = 4 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})
	const nameLen = 1 << 20
	mem.Write(64<<10, make([]byte, nameLen)) // the name: 1 MiB of zeros
	var shape [16]byte
	binary.LittleEndian.PutUint64(shape[:], 1)
	binary.LittleEndian.PutUint64(shape[8:], 2)
	mem.Write(1024, shape[:])
	mem.Write(4096, make([]byte, 8))
	h := hostTensorNew(context.Background(), s, mem, stack(64<<10, nameLen, uint32(tensor.FP32), 1024, 2, 4096, 8))
	if h <= 0 {
		t.Fatalf("tensor_new: %d (%s)", h, s.LastError())
	}
	before := heapAfterGC()
	calls := 0
	for range 40 {
		if got := hostTopK(context.Background(), s, mem, stack(uint32(h), 1, 8192)); got != 0 {
			t.Logf("topk %d: %d (%s)", calls, got, s.LastError()[:min(80, len(s.LastError()))])
			break
		}
		calls++
	}
	held := int64(heapAfterGC()) - int64(before)
	t.Logf("%d topk calls: %d handles hold ~%d MiB of names; %d bytes charged (limit %d)", calls, s.Handles(), held>>20, s.used, limit)
	if held > 2*limit {
		t.Errorf("topk results hold %d MiB of names under a %d MiB limit (%d bytes charged)", held>>20, limit>>20, s.used)
	}
	runtime.KeepAlive(s)
}
