package cyxwiz

import (
	"context"
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
	// A host tensor (a model's output from infer) may have a long name (1
	// MiB here); one a guest names, at most abi.MaxNameLen.
	const nameLen = 1 << 20
	h := s.Put(&tensor.Tensor{Name: string(make([]byte, nameLen)), DType: tensor.FP32, Shape: []int64{1, 2}, Data: make([]byte, 8)})
	if h == 0 {
		t.Fatal("Put: no handle")
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
