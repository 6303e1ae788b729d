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

// When a model a guest calls (host function infer) fails and the guest
// passes the failure on, the answer carries that failure's code: here the
// called deployment's queue is full, RESOURCE_EXHAUSTED as when the model is
// called directly (it was INVALID_ARGUMENT, which clients treat as final).
func TestGuestInferQueueFullCode(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	client, models := serveGuestsManager(t, slow, []deploy.Spec{
		{Name: "busy", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"},
			Batching: engine.Config{Instances: 1, QueueCapacity: 1}},
		{Name: "g", Format: "slow", Model: artifact.Artifact{URI: "file:///mem2"}, AllowedDeployments: []string{"busy"},
			Guests: preGuest(guestArtifact(t, "caller")), Batching: engine.Config{Instances: 1, QueueCapacity: 8}},
	})
	t.Cleanup(func() { close(slow.gate) }) // runs before the node closes
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Fill busy: one request in the model (held), one queued. Each is seen
	// where it should be before the next is sent.
	busy, err := models.Model("busy", "")
	if err != nil {
		t.Fatal(err)
	}
	go client.ModelInfer(ctx, slowReq("busy"))
	waitFor(t, func() bool { return slow.calls.Load() == 1 })
	go client.ModelInfer(ctx, slowReq("busy"))
	waitFor(t, func() bool { return busy.Status().Stats.Queued == 1 })
	if _, err := client.ModelInfer(ctx, slowReq("busy")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("direct call to the full deployment: %v, want ResourceExhausted", err)
	}
	_, err = client.ModelInfer(ctx, slowReq("g"))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("through the guest: %v, want ResourceExhausted", err)
	}
}
