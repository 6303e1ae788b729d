package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// guestArtifact builds the guest in testdata/guests/name (guesttest
// caches it between runs), writes it to a file and returns its artifact.
func guestArtifact(t *testing.T, name string) artifact.Artifact {
	t.Helper()
	wasm := guesttest.Build(t, "host/server/testdata/guests/"+name)
	path := filepath.Join(t.TempDir(), name+".wasm")
	if err := os.WriteFile(path, wasm, 0o644); err != nil {
		t.Fatal(err)
	}
	return artifact.Artifact{URI: "file://" + path}
}

// preGuest is a deployment spec's one preprocess guest.
func preGuest(a artifact.Artifact) []deploy.Guest {
	return []deploy.Guest{{Name: "pre", Artifact: a, Roles: []string{"preprocess"}, Instances: 1}}
}

// serveGuests deploys specs (format "slow", all on model) on a node with a
// guest runtime, waits until each serves, and serves them over gRPC.
func serveGuests(t *testing.T, model *slowModel, specs []deploy.Spec) inference.GRPCInferenceServiceClient {
	t.Helper()
	client, _ := serveGuestsManager(t, model, specs)
	return client
}

// serveGuestsManager is serveGuests that also returns the deployments, for
// tests that watch a deployment's engine.
func serveGuestsManager(t *testing.T, model *slowModel, specs []deploy.Spec) (inference.GRPCInferenceServiceClient, *deploy.Manager) {
	t.Helper()
	rt, err := guest.NewRuntime(context.Background(), guest.Config{CallTimeout: 5 * time.Second}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	models := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 1}, loaders.NewRegistry(slowLoader{model}), nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
		rt.Close(ctx)
	})
	for _, spec := range specs {
		if _, err := models.Assign(spec.Name, spec, deploy.OwnerOperator); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		st, err := models.WaitFor(ctx, spec.Name, deploy.Settled)
		cancel()
		if err != nil || !st.State.Serving() {
			t.Fatalf("deploy %s: %v %v %s", spec.Name, err, st.State, st.Message)
		}
	}
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	return inference.NewGRPCInferenceServiceClient(conn), models
}

// zzPinNode serves deployment "pin" (slowModel behind the pin guest as its
// preprocess guest) and "oth" (slowModel, no guest) over gRPC.
func zzPinNode(t *testing.T) inference.GRPCInferenceServiceClient {
	t.Helper()
	return serveGuests(t, &slowModel{}, []deploy.Spec{
		{Name: "pin", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"}, Guests: preGuest(guestArtifact(t, "pin")),
			Batching: engine.Config{Instances: 1, QueueCapacity: 8}},
		{Name: "oth", Format: "slow", Model: artifact.Artifact{URI: "file:///mem2"},
			Batching: engine.Config{Instances: 1, QueueCapacity: 8}},
	})
}

// zzRows: 600x2 FP32 = 4800 bytes, passed to a guest by handle (> 4 KiB).
const zzRows = 600

func zzFill(model string, rows int, v float32) *inference.ModelInferRequest {
	x := make([]float32, 2*rows)
	for i := range x {
		x[i] = v
	}
	return &inference.ModelInferRequest{ModelName: model,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{int64(rows), 2}}},
		RawInputContents: [][]byte{f32raw(x...)}}
}

// A guest that pins a call input keeps its own copy: the input's data is
// the pooled gRPC request buffer (raw_input_contents alias it), which the
// next request is read into once the response is marshalled.
func TestPinnedInputOwnsItsData(t *testing.T) {
	client := zzPinNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i <= 50; i++ {
		resp, err := client.ModelInfer(ctx, zzFill("pin", zzRows, float32(1+100*min(i, 1)+i)))
		if err != nil {
			t.Fatal(err)
		}
		// The reference is the first request's 1.0s, doubled.
		for j, v := range rawF32(resp.RawOutputContents[0]) {
			if v != 2 {
				t.Fatalf("call %d: element %d = %v, want 2 (the pinned first input, doubled): the pinned tensor changed under the guest", i, j, v)
			}
		}
	}
}

// The pool is the node's: a pinned input of deployment "pin" must not show
// a request to another deployment (a guest saw other tenants' requests).
func TestPinnedInputNotSharedAcrossDeployments(t *testing.T) {
	client := zzPinNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.ModelInfer(ctx, zzFill("pin", zzRows, 1)); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		secret := float32(4200 + i)
		if _, err := client.ModelInfer(ctx, zzFill("oth", zzRows, secret)); err != nil {
			t.Fatal(err)
		}
		// A small request: its buffer is of another size class.
		resp, err := client.ModelInfer(ctx, zzFill("pin", 1, 0))
		if err != nil {
			t.Fatal(err)
		}
		y := rawF32(resp.RawOutputContents[0])
		if y[0] == 2 && y[len(y)-1] == 2 {
			continue
		}
		// The model doubled the guest's tensor (exact in float32): halve it
		// back to the bytes the guest saw, and look for the other
		// deployment's data in them at any offset.
		seen := make([]float32, len(y))
		for j, v := range y {
			seen[j] = v / 2
		}
		pattern := bytes.Repeat(f32raw(secret), 4)
		if bytes.Contains(f32raw(seen...), pattern) {
			t.Fatalf("round %d: pin's response carries the bytes of a request to deployment oth (%v), e.g. element 0 = %v; want all 2", i, secret, y[0])
		}
		t.Fatalf("round %d: pin's output element 0 = %v, want 2: its pinned tensor was overwritten", i, y[0])
	}
}
