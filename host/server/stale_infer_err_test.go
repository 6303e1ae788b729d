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

// zzReview3FallbackGuest tries an optional model, falls back to one it may
// call (which answers), and then rejects the request for a reason of its
// own, an error that wraps no host error.
const zzReview3FallbackGuest = `package main

import (
	"errors"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if _, err := sdk.Infer("optional", in...); err == nil {
		return nil, errors.New("optional model answered")
	}
	if _, err := sdk.Infer("spare", in...); err != nil {
		return nil, err
	}
	return nil, errors.New("input rejected by the guest")
}
`

// A guest that handled a failed infer (a fallback that answered) and then
// rejects the request on its own answers with its own code,
// INVALID_ARGUMENT, not the handled failure's (PERMISSION_DENIED here).
func TestFallbackAfterFailedInferKeepsGuestCode(t *testing.T) {
	wasm := zzBuildGuest(t, zzReview3FallbackGuest)
	rt, err := guest.NewRuntime(context.Background(), guest.Config{CallTimeout: 5 * time.Second}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	models := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 1}, loaders.NewRegistry(slowLoader{&slowModel{}}), nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
		rt.Close(ctx)
	})
	specs := []deploy.Spec{
		{Name: "spare", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"},
			Batching: engine.Config{Instances: 1, QueueCapacity: 4}},
		{Name: "g", Format: "slow", Model: artifact.Artifact{URI: "file:///mem2"}, AllowedDeployments: []string{"spare"},
			Guests:   []deploy.Guest{{Name: "pre", Artifact: artifact.Artifact{URI: "file://" + wasm}, Roles: []string{"preprocess"}, Instances: 1}},
			Batching: engine.Config{Instances: 1, QueueCapacity: 4}},
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
	_, err = client.ModelInfer(ctx, slowReq("g"))
	t.Logf("answer: %v", err)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a guest's own rejection after a handled infer failure: %v, want InvalidArgument", status.Code(err))
	}
}
