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
)

// A guest that handled a failed infer (a fallback that answered) and then
// rejects the request on its own answers with its own code,
// INVALID_ARGUMENT, not the handled failure's (PERMISSION_DENIED here).
func TestFallbackAfterFailedInferKeepsGuestCode(t *testing.T) {
	client := serveGuests(t, &slowModel{}, []deploy.Spec{
		{Name: "spare", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"},
			Batching: engine.Config{Instances: 1, QueueCapacity: 4}},
		{Name: "g", Format: "slow", Model: artifact.Artifact{URI: "file:///mem2"}, AllowedDeployments: []string{"spare"},
			Guests: preGuest(guestArtifact(t, "fallback")), Batching: engine.Config{Instances: 1, QueueCapacity: 4}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.ModelInfer(ctx, slowReq("g"))
	t.Logf("answer: %v", err)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a guest's own rejection after a handled infer failure: %v, want InvalidArgument", status.Code(err))
	}
}
