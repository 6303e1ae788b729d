package engine

import (
	"context"
	"runtime"
	"sync"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// capModel is an InputReleaser that records the capacity of each batch's
// input "x" and answers one float per row (it keeps no input).
type capModel struct {
	mu   sync.Mutex
	caps []int
}

func (m *capModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	m.mu.Lock()
	m.caps = append(m.caps, cap(in[0].Data))
	m.mu.Unlock()
	rows := in[0].Shape[0]
	return []*tensor.Tensor{tensor.FromSlice("y", tensor.FP32, []int64{rows, 1}, make([]float32, rows))}, nil
}

func (*capModel) ReleasesInputs() bool { return true }

// A burst of large batches does not pin its memory for the life of the
// deployment: each batching worker of an InputReleaser kept the largest
// batch buffer it ever joined (a few concurrent 60 MB requests left
// hundreds of megabytes per instance held by an idle deployment, for
// weeks), and every later batch, however small, was copied into it.
func TestBurstBatchBufferNotKept(t *testing.T) {
	noLeaks(t)
	m := &capModel{}
	s := newScheduler(t, m, batchOf4)
	round := func(cols int) {
		var results []<-chan result
		for i := range 4 {
			results = append(results, goInfer(context.Background(), s, req(i, 1, cols)))
		}
		for _, ch := range results {
			if res := wait(t, ch); res.err != nil {
				t.Fatal(res.err)
			}
		}
	}
	const bigCols = 4 << 20 // 16 MiB per request, 64 MiB per batch
	round(bigCols)
	round(3)
	round(3)
	m.mu.Lock()
	caps := m.caps
	m.mu.Unlock()
	if len(caps) != 3 {
		t.Fatalf("%d batches, want 3", len(caps))
	}
	if caps[0] < 4*4*bigCols {
		t.Fatalf("test setup: big batch's buffer holds %d bytes", caps[0])
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > 48<<20 {
		t.Errorf("heap holds %d MiB after the burst: the 64 MiB batch buffer is still referenced", ms.HeapAlloc>>20)
	}
}
