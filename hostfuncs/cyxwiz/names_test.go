package cyxwiz

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Result names are charged: topk's x.Name+":values" and ":indices" are two
// new strings of the source name's length, which were free.
func TestTopKNamesCharged(t *testing.T) {
	mem := guestMemory(t, 20)
	const limit = 4 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})
	// A host tensor (a model's output from infer) may have a long name; the
	// longest whose topk results still fit the tensor list here.
	const nameLen = abi.MaxNameLen - len(":indices")
	h := s.Put(&tensor.Tensor{Name: string(make([]byte, nameLen)), DType: tensor.FP32, Shape: []int64{1, 2}, Data: make([]byte, 8)})
	if h == 0 {
		t.Fatal("Put: no handle")
	}
	before := heapAfterGC()
	calls := 0
	for range 400 {
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

// topk names its results after its input: an input whose name leaves no
// room for ":indices" in the tensor list is refused (the results reached
// the guest with their names cut by tensor_info).
func TestTopKResultNamesFit(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{})
	for _, n := range []int{abi.MaxNameLen - len(":indices"), abi.MaxNameLen - len(":indices") + 1, abi.MaxNameLen} {
		h := s.Put(&tensor.Tensor{Name: strings.Repeat("n", n), DType: tensor.FP32, Shape: []int64{1, 2}, Data: make([]byte, 8)})
		got := hostTopK(context.Background(), s, mem, stack(uint32(h), 1, 64))
		if fits := n+len(":indices") <= abi.MaxNameLen; fits && got != 0 || !fits && got != int32(abi.EINVAL) {
			t.Errorf("topk of a %d-byte name: %d (%s)", n, got, s.LastError())
		}
	}
}
