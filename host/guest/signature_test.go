package guest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// Pool.Signature returns what a guest declares (through the SDK's JSON),
// and reports a guest that declares nothing.
func TestPoolSignature(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	ctx := context.Background()
	post := newPool(t, rt, "guests/examples/cls-post", guest.PoolConfig{})
	sig, ok, err := post.Signature(ctx)
	if err != nil || !ok || sig.Inputs != nil || fmt.Sprint(sig.Outputs) != "[{label BYTES [-1 -1]} {score FP32 [-1 -1]}]" {
		t.Fatalf("cls-post: %+v %v %v", sig, ok, err)
	}
	policy := newPool(t, rt, "guests/examples/latency-batch", guest.PoolConfig{})
	if sig, ok, err := policy.Signature(ctx); err != nil || ok || sig.Inputs != nil || sig.Outputs != nil {
		t.Fatalf("latency-batch: %+v %v %v", sig, ok, err)
	}
}
