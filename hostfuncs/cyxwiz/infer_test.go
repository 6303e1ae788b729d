package cyxwiz

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// charged is what the session's handles and a pending infer hold.
func charged(s *Session) int64 {
	var sum int64
	for _, sl := range s.tab {
		sum += sl.bytes
	}
	if s.pending != nil {
		sum += s.pending.bytes
	}
	return sum
}

// A model with more outputs than out_cap: infer returned EINVAL after
// running it, so a guest (the SDK passes room for 64) could not call it.
// Now, as for every out buffer (ABI.md), it returns the count and writes
// nothing, and keeps the outputs, charged, for a retry with room, which
// does not run the model again.
func TestInferMoreOutputsThanRoom(t *testing.T) {
	const nOut = 70
	runs := 0
	s := NewSession(Env{Infer: func(_ context.Context, _ string, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
		runs++
		out := make([]*tensor.Tensor, nOut)
		for i := range out {
			out[i] = tensor.FromSlice(fmt.Sprintf("o%d", i), tensor.FP32, []int64{1}, []float32{float32(runs*1000 + i)})
		}
		return out, nil
	}})
	mem := guestMemory(t, 1)
	ctx := context.Background()
	in := s.Put(tensor.New("in", tensor.FP32, 2))
	mem.Write(0, binary.LittleEndian.AppendUint32(nil, in))
	sentinel := bytes.Repeat([]byte{0xAB}, 4*nOut)
	infer := func(outCap uint32) int32 {
		mem.Write(1024, sentinel)
		return hostInfer(ctx, s, mem, stack(0, 0, 0, 1, 1024, outCap))
	}
	check := func(when string) {
		t.Helper()
		if got := charged(s); got != s.used {
			t.Fatalf("%s: %d bytes charged, handles and kept outputs hold %d", when, s.used, got)
		}
	}

	for _, outCap := range []uint32{64, 0, 69} { // 0: ask for the count
		if n := infer(outCap); n != nOut {
			t.Fatalf("infer with room for %d: returned %d (%s), want the count %d", outCap, n, s.LastError(), nOut)
		}
		if b, _ := mem.Read(1024, 4*nOut); !bytes.Equal(b, sentinel) {
			t.Fatalf("infer with room for %d wrote into the out buffer", outCap)
		}
		check(fmt.Sprintf("room for %d", outCap))
	}
	if s.Handles() != 1 || s.used == 0 {
		t.Fatalf("after too-small calls: %d handles, %d bytes charged; want the input only, the outputs charged", s.Handles(), s.used)
	}
	if n := infer(nOut); n != nOut {
		t.Fatalf("retry with room: returned %d (%s)", n, s.LastError())
	}
	check("retry")
	b, _ := mem.Read(1024, 4*nOut)
	for i := range nOut {
		x, ok := s.Get(binary.LittleEndian.Uint32(b[4*i:]))
		if !ok || x.Name != fmt.Sprintf("o%d", i) {
			t.Fatalf("output %d: handle %d, %v", i, binary.LittleEndian.Uint32(b[4*i:]), x)
		}
		if i == nOut-1 && tensor.View[float32](x)[0] != float32(runs*1000+i) {
			t.Fatalf("output %d: %v, not the last run's", i, tensor.View[float32](x))
		}
	}
	// Four calls, one run per "call again with a bigger buffer" sequence:
	// each too-small call after the first was a retry too.
	if runs != 1 {
		t.Errorf("the model ran %d times, want 1", runs)
	}

	// Other inputs (a rename makes a new tensor) run the model again and
	// give back what the kept outputs held.
	if n := infer(1); n != nOut {
		t.Fatal(n)
	}
	mem.Write(512, []byte("renamed"))
	if rc := hostTensorName(ctx, s, mem, stack(in, 512, 7)); rc != 0 {
		t.Fatal(rc, s.LastError())
	}
	if n := infer(2); n != nOut || runs != 3 {
		t.Fatalf("after a rename: returned %d, %d runs, want %d and 3", n, runs, nOut)
	}
	check("after a rename")
	s.EndCall()
	if s.used != 0 || s.pending != nil {
		t.Fatalf("after the call: %d bytes charged, pending %v", s.used, s.pending != nil)
	}

	// Kept outputs count against the limits like handles: more outputs
	// than handles left is ENOMEM, with nothing held.
	s.lim.MaxHandles = 10
	in = s.Put(tensor.New("in", tensor.FP32, 2))
	mem.Write(0, binary.LittleEndian.AppendUint32(nil, in))
	if n := infer(8); n != int32(abi.ENOMEM) || !s.Exceeded() {
		t.Fatalf("70 outputs, 9 free handles: returned %d, exceeded %v, want ENOMEM", n, s.Exceeded())
	}
	check("handle limit")
	if s.used != 0 {
		t.Fatalf("a refused infer holds %d bytes", s.used)
	}
	s.EndCall()
	s.lim.MaxHandles, s.lim.MaxBytes = 4096, 100
	in = s.Put(tensor.New("in", tensor.FP32, 2))
	mem.Write(0, binary.LittleEndian.AppendUint32(nil, in))
	if n := infer(0); n != int32(abi.ENOMEM) || s.used != 0 {
		t.Fatalf("70 outputs over a 100-byte limit: returned %d, %d bytes held, want ENOMEM and none", n, s.used)
	}
}

// A model name is at most abi.MaxNameLen bytes, as a tensor name: infer
// copied a name as long as guest memory (into the model lookup, the kept
// retry and the error a refusing InferFunc quotes it in, 4 bytes a byte
// with %q): a call with an 8 MiB name made the host allocate 364 MiB.
func TestInferModelNameBounded(t *testing.T) {
	var called int
	s := NewSession(Env{Infer: func(_ context.Context, model string, _ []*tensor.Tensor) ([]*tensor.Tensor, error) {
		called++
		return nil, fmt.Errorf("%w: may not call model %q", ErrNotAllowed, model) // as the deployments' InferFunc does
	}})
	mem := guestMemory(t, 127) // 8 MiB
	ctx := context.Background()
	before := allocated()
	rc := hostInfer(ctx, s, mem, stack(0, mem.Size()-64, 0, 0, 0, 0))
	alloc := allocated() - before
	if rc != int32(abi.EINVAL) || alloc > 1<<20 {
		t.Errorf("infer of a model named with %d bytes: %d (%.100s), %d MiB allocated; want EINVAL", mem.Size()-64, rc, s.LastError(), alloc>>20)
	}
	name := bytes.Repeat([]byte{'m'}, abi.MaxNameLen)
	mem.Write(0, name)
	if rc := hostInfer(ctx, s, mem, stack(0, abi.MaxNameLen, 0, 0, 0, 0)); rc != int32(abi.EPERM) || called == 0 {
		t.Errorf("infer of a model named with %d bytes: %d (%s), want EPERM from the model lookup", len(name), rc, s.LastError())
	}
}

func allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// A model that refuses the guest's inputs (loaders.ErrInvalidInput) is the
// guest's mistake: infer returns EINVAL, as for a bad argument; it was EIO,
// which reads as the host's own trouble.
func TestInferRefusedInputsAreEINVAL(t *testing.T) {
	s := NewSession(Env{Infer: func(context.Context, string, []*tensor.Tensor) ([]*tensor.Tensor, error) {
		return nil, fmt.Errorf("model m: %w: input \"x\" wants FP32", loaders.ErrInvalidInput)
	}})
	mem := guestMemory(t, 1)
	in := s.Put(tensor.New("in", tensor.FP32, 2))
	mem.Write(0, binary.LittleEndian.AppendUint32(nil, in))
	if e := hostInfer(context.Background(), s, mem, stack(0, 0, 0, 1, 1024, 4)); e != int32(abi.EINVAL) {
		t.Fatalf("infer of refused inputs: %d (%s), want EINVAL", e, s.errMsg)
	}
	if !strings.Contains(s.errMsg, "wants FP32") {
		t.Errorf("last_error %q does not say why", s.errMsg)
	}
}
