package guest_test

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// zzManyScalarsGuest returns, from preprocess, a tensor list of n BOOL
// scalars with empty names (19 bytes each) that it writes at 65536.
func zzManyScalarsGuest(n uint32) []byte {
	const base = 65536
	m := &zzModule{}
	size := 12 + 19*n
	m.memory = zzCat([]byte{0}, zzU(uint64(base+size)/65536+1))
	zzABIGuest(m)
	m.data = append(m.data, zzData(base, zzCat([]byte(abi.Magic), []byte{abi.Version, 0, 0, 0}, zzU32(n))))
	pre := m.addFunc(2, zzCat([]byte{1, 1, 0x7f}, // local 2: the entry's address
		[]byte{0x41}, zzS(base+12), []byte{0x21, 2},
		[]byte{0x03, 0x40},
		[]byte{0x20, 2, 0x41}, zzS(0x00010000), []byte{0x36, 0, 0}, // dtype BOOL, kind inline, rank 0
		[]byte{0x20, 2, 0x41, 1, 0x36, 0, 10},                            // data_len 1 (low word)
		[]byte{0x20, 2, 0x41, 19, 0x6a, 0x22, 2},                         // next entry
		[]byte{0x41}, zzS(int64(base+size)), []byte{0x49, 0x0d, 0, 0x0b}, // loop while below the end
		[]byte{0x42}, zzS(abi.Pack(base, size)), []byte{0x0b}))
	m.export("preprocess", 0x00, pre)
	return m.bytes()
}

func zzU32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

// The tensors of an output count against max_output_size for what the
// host makes of them, not only their bytes in the list: a list of 19-byte
// BOOL scalars became ~230 bytes of host memory an entry, 8 MiB of output
// ~100 MiB.
func TestOutputEntriesBounded(t *testing.T) {
	const limit = 8 << 20
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir(), MaxOutputBytes: limit})
	ctx := context.Background()
	call := func(n uint32) ([]*tensor.Tensor, uint64, error) {
		t.Helper()
		mod, err := rt.Compile(ctx, zzManyScalarsGuest(n))
		if err != nil {
			t.Fatal(err)
		}
		defer mod.Close(ctx)
		p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: "scalars"})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(ctx)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		out, err := p.Preprocess(ctx, nil)
		runtime.ReadMemStats(&after)
		return out, after.TotalAlloc - before.TotalAlloc, err
	}
	out, alloc, err := call((limit - 12) / 19)
	t.Logf("%d outputs, err %v; the call allocated %d MiB", len(out), err, alloc>>20)
	if err == nil && alloc > 4*limit {
		t.Fatalf("an output list of %d MiB made the host allocate %d MiB", limit>>20, alloc>>20)
	}
	if err != nil && !errors.Is(err, guest.ErrBadOutput) {
		t.Fatalf("err = %v, want ErrBadOutput", err)
	}
	if out, _, err := call(10_000); err != nil || len(out) != 10_000 {
		t.Fatalf("10,000 scalars: %d outputs, err %v", len(out), err)
	}
}
