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
