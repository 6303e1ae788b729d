package cyxwiz

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// guestMemory is the exported memory of a module that has nothing else:
// pages of 64 KiB for the host functions to read and write.
func guestMemory(t *testing.T, pages byte) api.Memory {
	t.Helper()
	ctx := context.Background()
	r := wazero.NewRuntime(ctx)
	t.Cleanup(func() { r.Close(ctx) })
	wasm := []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		5, 3, 1, 0, pages, // memory section: one memory, min pages
		7, 10, 1, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0} // export "memory"
	m, err := r.Instantiate(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	return m.Memory()
}

func stack(v ...uint32) []uint64 {
	s := make([]uint64, len(v))
	for i, x := range v {
		s[i] = uint64(x)
	}
	return s
}

// newTensor calls tensor_new for an FP32 tensor of shape named name, with
// data bytes (zeros) from guest memory, and returns its result.
func newTensor(s *Session, mem api.Memory, name string, data uint32, shape ...int64) int32 {
	var b []byte
	for _, d := range shape {
		b = binary.LittleEndian.AppendUint64(b, uint64(d))
	}
	mem.Write(0, []byte(name))
	mem.Write(1024, b)
	return hostTensorNew(context.Background(), s, mem, stack(0, uint32(len(name)), uint32(tensor.FP32), 1024, uint32(len(shape)), 4096, data))
}

// An empty tensor with huge dimensions holds nothing, but operations loop
// over its rows: such shapes are refused, and the operations return.
func TestEmptyTensorsWithHugeDimensions(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{Limits: Limits{MaxBytes: 1 << 20}})
	if h := newTensor(s, mem, "x", 0, 1<<62, 0); h != int32(abi.ENOMEM) {
		t.Fatalf("tensor_new of [2^62, 0]: %d, want ENOMEM", h)
	}
	// The same shape from a request (an input the host puts in).
	in := s.Put(&tensor.Tensor{Name: "x", DType: tensor.FP32, Shape: []int64{1 << 62, 0}})
	done := make(chan int32, 1)
	go func() { done <- hostSoftmax(context.Background(), s, mem, stack(in, 1)) }()
	select {
	case got := <-done:
		if got != int32(abi.ENOMEM) {
			t.Errorf("softmax of an input [2^62, 0]: %d, want ENOMEM", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("softmax of an empty [2^62, 0] still running")
	}
	// Within the limit, an empty tensor works and costs nothing.
	h := newTensor(s, mem, "x", 0, 1000, 0)
	if h <= 0 {
		t.Fatalf("tensor_new of [1000, 0]: %d", h)
	}
	if got := hostSoftmax(context.Background(), s, mem, stack(uint32(h), 1)); got <= 0 {
		t.Fatalf("softmax of [1000, 0]: %d (%s)", got, s.LastError())
	}
	// Resize to an empty output of huge height and width is refused
	// before its weight tables are made.
	hwc := newTensor(s, mem, "img", 0, 2, 2, 0)
	if got := hostResize(context.Background(), s, mem, stack(uint32(hwc), 1<<30, 1<<30, 1)); got != int32(abi.ENOMEM) {
		t.Errorf("resize to 2^30 × 2^30 × 0: %d, want ENOMEM", got)
	}
}

// concat adds up the rows of empty parts: two [2^10, 0, 2^10], each within
// a limit of 2^20, made a [2^11, 0, 2^10] that tensor_new and reshape
// refuse (ENOMEM, ABI.md), and that no operation could then use.
func TestConcatOfEmptyPartsChecksItsShape(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{Limits: Limits{MaxBytes: 1 << 20}})
	a := newTensor(s, mem, "x", 0, 1<<10, 0, 1<<10)
	if a <= 0 {
		t.Fatalf("tensor_new of [2^10, 0, 2^10]: %d (%s)", a, s.LastError())
	}
	var hs [8]byte
	binary.LittleEndian.PutUint32(hs[:], uint32(a))
	binary.LittleEndian.PutUint32(hs[4:], uint32(a))
	mem.Write(2048, hs[:])
	if got := hostConcat(context.Background(), s, mem, stack(2048, 2)); got != int32(abi.ENOMEM) {
		y, _ := s.Get(uint32(got))
		t.Errorf("concat of two [2^10, 0, 2^10]: %d (shape %v), want ENOMEM", got, y.Shape)
	}
	if s.Handles() != 1 || s.used != 1 {
		t.Errorf("after a refused concat: %d handles, %d bytes charged", s.Handles(), s.used)
	}
}

// Working memory of an operation (topk's heap, resize's weights) is
// charged, or not made at all for an empty result: it cannot take the host
// past the limit.
func TestScratchIsCharged(t *testing.T) {
	mem := guestMemory(t, 1)
	const limit = 4 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	mem.Write(8192, make([]byte, 8))
	// An empty tensor of 2^22 columns: no rows to order.
	h := newTensor(s, mem, "x", 0, 0, 1<<22)
	if h <= 0 {
		t.Fatalf("tensor_new: %d (%s)", h, s.LastError())
	}
	if got := hostTopK(context.Background(), s, mem, stack(uint32(h), 1, 8192)); got != 0 {
		t.Errorf("topk of [0, 2^22]: %d (%s)", got, s.LastError())
	}
	// k = 2^18 of 2^20 columns: the results take 3 MiB, keeping the best
	// k in order 2 MiB more.
	in := s.Put(tensor.New("in", tensor.FP32, 1, 1<<20))
	if got := hostTopK(context.Background(), s, mem, stack(in, 1<<18, 8192)); got != int32(abi.ENOMEM) {
		t.Errorf("topk needing 5 MiB under a 4 MiB limit: %d, want ENOMEM", got)
	}
	// An image of no channels resized to 1 × 2^22: an empty result.
	hwc := newTensor(s, mem, "img", 0, 2, 2, 0)
	if got := hostResize(context.Background(), s, mem, stack(uint32(hwc), 1, 1<<22, 1)); got <= 0 {
		t.Errorf("resize of [2, 2, 0] to 1 × 2^22: %d (%s)", got, s.LastError())
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
		t.Errorf("%d MiB allocated under a 4 MiB limit", d>>20)
	}
	if s.used > limit {
		t.Errorf("used %d after the calls", s.used)
	}
}

// What a guest keeps on the host counts against MaxBytes however it keeps
// it: reshapes outliving their source, names, pinned inputs.
func TestHostMemoryAccounting(t *testing.T) {
	mem := guestMemory(t, 20)
	const limit = 2 << 20
	s := NewSession(Env{Limits: Limits{MaxBytes: limit}})

	// Reshape, pin, free the source: each round keeps 1 MiB.
	kept := 0
	for range 8 {
		h := newTensor(s, mem, "x", 1<<20, 1<<18)
		if h <= 0 {
			break
		}
		var shape [8]byte
		binary.LittleEndian.PutUint64(shape[:], 1<<18)
		mem.Write(512, shape[:])
		r := hostReshape(context.Background(), s, mem, stack(uint32(h), 512, 1))
		hostTensorFree(context.Background(), s, mem, stack(uint32(h)))
		if r <= 0 {
			break
		}
		hostTensorPin(context.Background(), s, mem, stack(uint32(r)))
		kept++
	}
	s.EndCall()
	if kept*(1<<20) > limit {
		t.Errorf("reshape + free kept %d MiB pinned under a 2 MiB limit", kept)
	}
	s.Close()

	// Names are host memory.
	s = NewSession(Env{Limits: Limits{MaxBytes: 2*abi.MaxNameLen + 100}})
	big := string(make([]byte, abi.MaxNameLen))
	if h := newTensor(s, mem, big, 0, 0); h <= 0 {
		t.Fatalf("tensor_new with a 64 KiB name: %d", h)
	}
	if h := newTensor(s, mem, big, 0, 0); h <= 0 {
		t.Fatalf("tensor_new with a 64 KiB name: %d", h)
	}
	if h := newTensor(s, mem, big, 0, 0); h != int32(abi.ENOMEM) {
		t.Errorf("third 64 KiB name under a 128 KiB limit: %d, want ENOMEM", h)
	}
	s.Close()

	// A pinned input stays after its call: it is charged.
	s = NewSession(Env{Limits: Limits{MaxBytes: limit}})
	in := s.Put(tensor.New("in", tensor.FP32, 1<<20)) // 4 MiB
	if got := hostTensorPin(context.Background(), s, mem, stack(in)); got != int32(abi.ENOMEM) {
		t.Errorf("pinning a 4 MiB input under a 2 MiB limit: %d, want ENOMEM", got)
	}
	s.EndCall()
	if s.Handles() != 0 {
		t.Errorf("%d handles kept", s.Handles())
	}
}

// A host operation stops when the guest call's context ends, like guest
// code does: a long matmul is one host call.
func TestHostOperationsStopAtDeadline(t *testing.T) {
	s := NewSession(Env{Limits: Limits{MaxBytes: 64 << 20}})
	a := s.Put(tensor.New("a", tensor.FP32, 2048, 2048))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	s.ctx = ctx
	start := time.Now()
	got := hostMatMul(ctx, s, nil, stack(a, a))
	s.ctx = nil
	if got >= 0 {
		t.Fatalf("matmul past its deadline: handle %d after %v", got, time.Since(start))
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("matmul stopped %v after start, the deadline was 50ms", took)
	}
}

// infer's output capacity cannot wrap the bounds check of its out buffer.
func TestInferOutCapacity(t *testing.T) {
	mem := guestMemory(t, 1)
	called := false
	s := NewSession(Env{Infer: func(context.Context, string, []*tensor.Tensor) ([]*tensor.Tensor, error) {
		called = true
		return nil, nil
	}})
	if got := hostInfer(context.Background(), s, mem, stack(0, 0, 0, 0, 16, 1<<30+1)); got != int32(abi.EINVAL) || called {
		t.Errorf("infer with room for 2^30+1 outputs: %d (model called: %v), want EINVAL", got, called)
	}
}

// Renaming a pinned tensor call after call costs one name, not one per call.
func TestRenamePinnedTensorKeepsOneNameCharged(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{Limits: Limits{MaxBytes: 1 << 20}})
	h := newTensor(s, mem, "x", 4000, 1000)
	if h <= 0 {
		t.Fatalf("tensor_new: %d", h)
	}
	hostTensorPin(context.Background(), s, mem, stack(uint32(h)))
	s.EndCall()
	mem.Write(8192, make([]byte, 1000))
	for call := range 2000 {
		if e := hostTensorName(context.Background(), s, mem, stack(uint32(h), 8192, 1000)); e != 0 {
			t.Fatalf("call %d: rename: %d (%s)", call, e, s.LastError())
		}
		s.EndCall()
	}
	if s.used != 4000+1000 {
		t.Errorf("used %d, want the data and one 1000-byte name", s.used)
	}
}
