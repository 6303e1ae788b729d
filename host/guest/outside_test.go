package guest_test

import (
	"context"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Host functions called outside an entry point get ENOCALL (ABI.md): the
// guest's Go init (_initialize), cyxwiz_abi_version, cyxwiz_entries and
// cyxwiz_alloc ran with the session attached, so a guest could make (and
// pin) host tensors there, which no call's accounting had made.
func TestHostCallsOutsideEntryPoints(t *testing.T) {
	rt := newRuntime(t, guest.Config{Limits: cyxwiz.Limits{MaxBytes: 8 << 20}})
	p := newPool(t, rt, "host/guest/testdata/outside", guest.PoolConfig{Config: map[string]string{"mode": "m"}})
	where := []string{"init: tensor_new", "init: config_get", "cyxwiz_abi_version", "cyxwiz_entries", "cyxwiz_alloc"}
	for call := range 3 {
		out, err := p.Preprocess(context.Background(), nil)
		if err != nil {
			t.Fatalf("call %d: %v", call, err)
		}
		if len(out) != 1 || out[0].DType != tensor.Int32 || len(out[0].Data) != 4*(len(where)+1) {
			t.Fatalf("call %d: got %v", call, out)
		}
		rc := tensor.View[int32](out[0])
		for i, w := range where {
			if abi.Errno(rc[i]) != abi.ENOCALL {
				t.Errorf("call %d: host call in %s returned %d, want ENOCALL (%d)", call, w, rc[i], abi.ENOCALL)
			}
		}
		if rc[len(where)] <= 0 {
			t.Errorf("call %d: tensor_new in preprocess returned %v, want a handle", call, abi.Errno(rc[len(where)]))
		}
	}
}

// A module's start function runs when an instance is made, outside any
// entry point: its host calls get ENOCALL too. Instances were made under
// the caller's context, which carries the session of another guest when
// that guest's infer runs a model served by this one (a custom format, or
// a deployment its manifest allows): the start function could read, make
// and free that guest's host tensors.
func TestStartFunctionGetsNoSession(t *testing.T) {
	m := &zzModule{}
	free := m.importFunc(cyxwiz.ModuleName, abi.FuncTensorFree, 1)
	zzABIGuest(m)
	start := m.addFunc(3, zzCat([]byte{0, 0x41}, zzS(1), []byte{0x10}, zzU(uint64(free)), []byte{0x1a, 0x0b}))
	m.start = zzU(uint64(start))
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	mod, err := rt.Compile(context.Background(), m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(context.Background())

	// The caller: a host function of another guest's call, holding handle 1.
	other := cyxwiz.NewSession(cyxwiz.Env{})
	if h := other.Put(tensor.New("x", tensor.FP32, 2)); h != 1 {
		t.Fatalf("Put: handle %d", h)
	}
	ctx := cyxwiz.WithSession(context.Background(), other)
	p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: "start"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if other.Handles() != 1 {
		t.Fatalf("the start function of a new instance freed the caller's handle 1 (%d handles left)", other.Handles())
	}
}
