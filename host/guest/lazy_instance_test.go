package guest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// zzSlowFormatGuest is a custom-format guest whose format_load spins for
// spin iterations and whose format_infer traps on an empty input list
// (returning an empty list otherwise).
func zzSlowFormatGuest(spin int32) []byte {
	m := &zzModule{}
	zzABIGuest(m)
	empty := zzCat([]byte(abi.Magic), []byte{abi.Version, 0, 0, 0, 0, 0, 0, 0})
	m.data = append(m.data, zzData(16, empty))
	ret := zzCat([]byte{0x42}, zzS(abi.Pack(16, uint32(len(empty)))), []byte{0x0b})
	load := m.addFunc(2, zzCat([]byte{1, 1, 0x7f}, // one i32 local
		[]byte{0x41}, zzS(int64(spin)), []byte{0x21, 2}, // local2 = spin
		[]byte{0x03, 0x40, 0x20, 2, 0x41, 1, 0x6b, 0x22, 2, 0x0d, 0, 0x0b}, // loop: br_if (local2 -= 1)
		ret))
	infer := m.addFunc(2, zzCat([]byte{0},
		[]byte{0x20, 0, 0x28, 2, 8, 0x45, 0x04, 0x40, 0x00, 0x0b}, // if count(ptr) == 0: unreachable
		ret))
	m.export("format_load", 0x00, load)
	m.export("format_infer", 0x00, infer)
	return m.bytes()
}

// An instance made for a call is the pool's: a caller whose deadline ends
// while the instance starts (here, a custom format's format_load, which
// takes longer than the caller will wait) gives up, but the instance is
// made and serves the next call. It was made under the caller's deadline
// and thrown away with it, so once an instance was lost, a deployment
// whose model loads in longer than its clients' deadlines never served
// again.
func TestInstanceOutlivesItsImpatientCaller(t *testing.T) {
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	ctx := context.Background()
	mod, err := rt.Compile(ctx, zzSlowFormatGuest(8_000_000))
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(ctx)
	p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: "slow-format", Instances: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	start := time.Now()
	if err := p.FormatLoad(ctx, []byte("model")); err != nil {
		t.Fatal(err)
	}
	load := time.Since(start)
	t.Logf("format_load takes %v", load)
	one := []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1}, []float32{1})}
	if _, err := p.FormatInfer(ctx, nil); !errors.Is(err, guest.ErrTrap) {
		t.Fatalf("trap: %v", err)
	}
	// The instance is gone; callers that wait a third of a load each.
	for i := range 20 {
		cctx, cancel := context.WithTimeout(ctx, load/3)
		_, err := p.FormatInfer(cctx, one)
		cancel()
		if err == nil {
			t.Logf("call %d served", i)
			return
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	t.Fatalf("20 calls of %v each all timed out: no instance was ever made", load/3)
}
