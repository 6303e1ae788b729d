package deploy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A batch-policy guest runs in its deployment's batcher, under the
// engine's context: the call chain of the requests it decides about was
// lost. a's preprocess guest calls b; b's batch policy calls a, which is
// already on the chain: the policy's call queued for a's guest instance,
// held by the request the policy was deciding about, and b's batcher (every
// request to b) stalled until the policy's bound ran out. The call that
// closes the cycle is refused: the policy fails and the batch runs.
func TestPolicyGuestCycleRefused(t *testing.T) {
	n := newGuestNode(t)
	n.deploy(t, "a", callSpec(n, t, "a", "b", "b"))
	spec := linearSpec("b", n.file(t, "b.onnx", linear(0)))
	spec.AllowedDeployments = []string{"a"}
	spec.Config = map[string]string{"target": "a"}
	// The policy's bound is far beyond the test's deadline.
	spec.Batching = engine.Config{MaxBatchSize: 4, MaxQueueDelay: time.Minute, Instances: 1}
	spec.Guests = []deploy.Guest{{Name: "pol", Artifact: n.wasm(t, "host/deploy/testdata/callmodel"),
		Roles: []string{"batch_policy"}, CallTimeout: 20 * time.Second}}
	if st := n.deploy(t, "b", spec); !st.State.Serving() {
		t.Fatalf("%v %s", st.State, st.Message)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := inferX(ctx, n.m, "a")
	if err != nil {
		t.Fatalf("%v, want the policy's cycle refused and the batch run", err)
	}
	if got := tensor.View[float32](out[0]); got[0] != 9 || got[1] != 12 {
		t.Fatalf("Y = %v", got)
	}
}

// Format guests whose deployments batch and call each other: the call
// that closes the cycle is refused, whichever requests share a batch.
// (A format guest's model declares no inputs, so its engine does not
// batch today; were it to, a batch ran under the engine's context and
// lost its requests' call chains: the cycle went unnoticed and waited,
// holding every instance, for the guests' call timeout.)
func TestBatchedFormatGuestCycleRefused(t *testing.T) {
	n := newGuestNode(t)
	for _, id := range []string{"fa", "fb"} {
		other := map[string]string{"fa": "fb", "fb": "fa"}[id]
		spec := deploy.Spec{Name: id, Format: deploy.FormatGuest, Model: n.file(t, id+".bin", []byte("model")),
			AllowedDeployments: []string{other}, Config: map[string]string{"target": other},
			Batching: engine.Config{MaxBatchSize: 4, MaxQueueDelay: time.Minute, Instances: 2},
			Guests: []deploy.Guest{{Name: "fmt", Artifact: n.wasm(t, "host/deploy/testdata/callmodel"),
				Roles: []string{"format"}, Instances: 2, CallTimeout: 10 * time.Second}}}
		if st := n.deploy(t, id, spec); !st.State.Serving() {
			t.Fatalf("%s: %v %s", id, st.State, st.Message)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	x := tensor.FromSlice("X", tensor.FP32, []int64{2, 3}, []float32{1, 1, 1, 1, 1, 1})
	d, err := n.m.Model("fa", "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.Infer(ctx, []*tensor.Tensor{x}, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, cyxwiz.ErrNotAllowed) || !strings.Contains(err.Error(), "cycle") {
			t.Errorf("request %d: %v, want ErrNotAllowed naming the cycle", i, err)
		}
	}
}
