package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// zzCallerGuest is a preprocess guest that runs its input through the
// deployment "busy" (as a pipeline stage calling another model does) and
// passes the host's error on.
const zzCallerGuest = `package main

import "github.com/cyxwiz/cyxwiz-node/guests/sdk"

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	return sdk.Infer("busy", in...)
}
`

// When a model a guest calls (host function infer) fails and the guest
// passes the failure on, the answer carries that failure's code: here the
// called deployment's queue is full, RESOURCE_EXHAUSTED as when the model is
// called directly (it was INVALID_ARGUMENT, which clients treat as final).
func TestGuestInferQueueFullCode(t *testing.T) {
	wasm := zzBuildGuest(t, zzCallerGuest)
	rt, err := guest.NewRuntime(context.Background(), guest.Config{CallTimeout: 5 * time.Second}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	slow := &slowModel{gate: make(chan struct{})}
	models := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 1}, loaders.NewRegistry(slowLoader{slow}), nil, nil, quietLog())
	t.Cleanup(func() {
		close(slow.gate)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
		rt.Close(ctx)
	})
	specs := []deploy.Spec{
		{Name: "busy", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"},
			Batching: engine.Config{Instances: 1, QueueCapacity: 1}},
		{Name: "g", Format: "slow", Model: artifact.Artifact{URI: "file:///mem2"}, AllowedDeployments: []string{"busy"},
			Guests:   []deploy.Guest{{Name: "pre", Artifact: artifact.Artifact{URI: "file://" + wasm}, Roles: []string{"preprocess"}, Instances: 1}},
			Batching: engine.Config{Instances: 1, QueueCapacity: 8}},
	}
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
	client := inference.NewGRPCInferenceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Fill busy: one request in the model (held), one queued.
	for range 2 {
		go client.ModelInfer(ctx, slowReq("busy"))
		time.Sleep(150 * time.Millisecond)
	}
	if _, err := client.ModelInfer(ctx, slowReq("busy")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("direct call to the full deployment: %v, want ResourceExhausted", err)
	}
	_, err = client.ModelInfer(ctx, slowReq("g"))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("through the guest: %v, want ResourceExhausted", err)
	}
}
