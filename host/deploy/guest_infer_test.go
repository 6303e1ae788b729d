package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// callSpec is the linear model behind a preprocess guest that first runs
// the model named target (allowed, with allow).
func callSpec(n *guestNode, t *testing.T, name, target string, allow ...string) deploy.Spec {
	spec := linearSpec(name, n.file(t, name+".onnx", linear(0)))
	spec.AllowedDeployments = allow
	spec.Config = map[string]string{"target": target}
	spec.Guests = []deploy.Guest{{
		Name: "pre", Artifact: n.wasm(t, "host/deploy/testdata/callmodel"), Roles: []string{"preprocess"},
		Instances: 1, CallTimeout: time.Minute,
	}}
	return spec
}

func inferX(ctx context.Context, m *deploy.Manager, name string) ([]*tensor.Tensor, error) {
	d, err := m.Model(name, "")
	if err != nil {
		return nil, err
	}
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	return d.Infer(ctx, []*tensor.Tensor{x}, nil)
}

// A guest may run its own model, by "" or by its name: that is the native
// model, not the deployment's pipeline again.
func TestGuestInferOwnModel(t *testing.T) {
	n := newGuestNode(t)
	for _, target := range []string{"", "self"} {
		n.deploy(t, "self-"+target, callSpec(n, t, "self", target))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := inferX(ctx, n.m, "self")
		cancel()
		if err != nil {
			t.Fatalf("target %q: %v", target, err)
		}
		if got := tensor.View[float32](out[0]); got[0] != 9 || got[1] != 12 {
			t.Fatalf("target %q: Y = %v", target, got)
		}
		if _, err := n.m.Stop(context.Background(), "self-"+target); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := n.m.WaitFor(wctx, "self-"+target, deploy.Settled); err != nil {
			t.Fatal(err)
		}
		wcancel()
	}
}

// Deployments whose guests call each other (each allows the other) are a
// cycle: a → b → a → b ... took an instance of each guest a level until
// none was left, then waited, holding them all, for the caller's deadline
// (or the guests' call timeout), while every other request to either
// deployment waited too. The call that closes the cycle is refused.
func TestGuestInferCycleRefused(t *testing.T) {
	n := newGuestNode(t)
	n.deploy(t, "a", callSpec(n, t, "a", "b", "b"))
	n.deploy(t, "b", callSpec(n, t, "b", "a", "a"))
	for _, name := range []string{"a", "b"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := inferX(ctx, n.m, name)
		cancel()
		if err == nil {
			t.Fatalf("%s: a cycle ran", name)
		}
		if !errors.Is(err, cyxwiz.ErrNotAllowed) || !strings.Contains(err.Error(), "cycle") {
			t.Fatalf("%s: %v, want ErrNotAllowed naming the cycle", name, err)
		}
	}
}

// A FORMAT guest is its deployment's model: its infer of "" (or of its own
// name) ran format_infer again, which ran it again, each level on an
// engine instance and a guest instance, until none was left; then it
// waited, holding them all and stalling every request to the deployment,
// for the caller's deadline or the guest's call timeout. It is refused.
func TestFormatGuestInferOwnModelRefused(t *testing.T) {
	n := newGuestNode(t)
	for _, target := range []string{"", "fmt"} {
		for _, batched := range []bool{false, true} {
			id := fmt.Sprintf("fmt-%s-%v", target, batched)
			spec := deploy.Spec{Name: "fmt", Format: deploy.FormatGuest, Model: n.file(t, "fmt.bin", []byte("model")),
				Config: map[string]string{"target": target},
				Guests: []deploy.Guest{{Name: "fmt", Artifact: n.wasm(t, "host/deploy/testdata/callmodel"),
					Roles: []string{"format"}, Instances: 2, CallTimeout: time.Minute}}}
			if batched {
				spec.Batching = engine.Config{MaxBatchSize: 4, MaxQueueDelay: time.Millisecond, Instances: 2}
			}
			if st := n.deploy(t, id, spec); !st.State.Serving() {
				t.Fatalf("%s: %v %s", id, st.State, st.Message)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, err := inferX(ctx, n.m, "fmt")
			cancel()
			if !errors.Is(err, cyxwiz.ErrNotAllowed) {
				t.Fatalf("%s: %v, want ErrNotAllowed", id, err)
			}
			if _, err := n.m.Stop(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := n.m.WaitFor(wctx, id, deploy.Settled); err != nil {
				t.Fatal(err)
			}
			wcancel()
		}
	}
}

// A batch-policy guest runs in its deployment's batcher: its infer of its
// own model queued a request behind the decision it was making, and the
// batcher, waiting for the policy, stalled every request to the deployment
// until the policy's bound (max_queue_delay) ran out. It is refused: the
// policy fails and the batch runs.
func TestPolicyGuestInferOwnModelRefused(t *testing.T) {
	n := newGuestNode(t)
	spec := linearSpec("pol", n.file(t, "pol.onnx", linear(0)))
	spec.Config = map[string]string{"target": ""}
	spec.Batching = engine.Config{MaxBatchSize: 4, MaxQueueDelay: time.Minute, Instances: 1}
	spec.Guests = []deploy.Guest{{Name: "pol", Artifact: n.wasm(t, "host/deploy/testdata/callmodel"),
		Roles: []string{"batch_policy"}, CallTimeout: time.Minute}}
	if st := n.deploy(t, "pol", spec); !st.State.Serving() {
		t.Fatalf("%v %s", st.State, st.Message)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := inferX(ctx, n.m, "pol")
	if err != nil {
		t.Fatal(err)
	}
	if got := tensor.View[float32](out[0]); got[0] != 9 || got[1] != 12 {
		t.Fatalf("Y = %v", got)
	}
}

// A deployment whose guest calls an allowed deployment that is not on the
// node answered NotFound for itself: a client was told that the model it
// called (which serves) does not exist. The model it called is not ready:
// its dependency is missing.
func TestGuestInferMissingDeployment(t *testing.T) {
	n := newGuestNode(t)
	n.deploy(t, "a", callSpec(n, t, "a", "b", "b"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := inferX(ctx, n.m, "a")
	if errors.Is(err, deploy.ErrNotFound) || !errors.Is(err, deploy.ErrNotReady) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("%v, want ErrNotReady (not ErrNotFound) naming b", err)
	}
}
