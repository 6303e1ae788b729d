package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// A client that drops its connection with requests queued and one running
// leaves nothing behind: the queue empties, the running request ends, the
// bytes held in flight go back to zero, and none of them runs after.
func TestDroppedConnectionFreesRequests(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	n := newTestNode(t, slow, slowSpec("slow", 8))
	inf := NewInference(n.models).LimitInflight(1 << 30)
	srv, conn, _ := startServer(t, testConfig(t), Services{Inference: inf})
	client := inference.NewGRPCInferenceServiceClient(conn)
	d, err := n.models.Model("slow", "")
	if err != nil {
		t.Fatal(err)
	}

	drop, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	dropped := inference.NewGRPCInferenceServiceClient(drop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const queued = 4
	errs := make(chan error, queued+1)
	go func() { _, err := dropped.ModelInfer(ctx, slowReq("slow")); errs <- err }()
	waitFor(t, func() bool { return slow.calls.Load() == 1 })
	for range queued {
		go func() { _, err := dropped.ModelInfer(ctx, slowReq("slow")); errs <- err }()
	}
	waitFor(t, func() bool { return d.Status().Stats.Queued == queued })
	drop.Close()
	for range queued + 1 {
		if err := <-errs; err == nil {
			t.Error("a call on the closed connection succeeded")
		}
	}
	waitFor(t, func() bool {
		st := d.Status().Stats
		return st.Queued == 0 && st.Cancelled == queued+1 && inf.inflight.Load() == 0
	})
	close(slow.gate)
	if _, err := client.ModelInfer(ctx, slowReq("slow")); err != nil {
		t.Fatalf("after the drop: %v", err)
	}
	if c := slow.calls.Load(); c != 2 {
		t.Fatalf("model ran %d times, want 2: a request of the dropped connection ran", c)
	}
}
