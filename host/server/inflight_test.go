package server

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// The inference requests being served (queued or running) hold at most
// limits.max_inflight_bytes together: past it a request is
// RESOURCE_EXHAUSTED at once, and served again once others are done. A
// queue's bound counts requests, not bytes: 256 queued requests of 55 MB
// each held 14 GB.
func TestInflightBytesBounded(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	n := newTestNode(t, slow, slowSpec("slow", 8))
	big := func() *inference.ModelInferRequest {
		const rows = 8192 // 64 KiB of FP32
		return &inference.ModelInferRequest{ModelName: "slow",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{rows, 2}}},
			RawInputContents: [][]byte{make([]byte, rows*2*4)}}
	}
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(n.models).LimitInflight(150 << 10)})
	client := inference.NewGRPCInferenceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	done := make(chan error, 2)
	for range 2 { // one runs (held at the gate), one waits in the queue
		go func() { _, err := client.ModelInfer(ctx, big()); done <- err }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for slow.calls.Load() < 1 || n.models.List()[0].Status().Stats.Queued < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the two requests did not reach the model and its queue")
		}
		time.Sleep(time.Millisecond)
	}
	_, err := client.ModelInfer(ctx, big())
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limits.max_inflight_bytes") {
		t.Fatalf("a third request past the bound: %v, want ResourceExhausted naming limits.max_inflight_bytes", err)
	}
	// A small one still fits.
	small := slowReq("slow")
	go func() { _, err := client.ModelInfer(ctx, small); done <- err }()
	for range 3 {
		slow.gate <- struct{}{}
	}
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// Once they are done, the room is back.
	go func() { slow.gate <- struct{}{} }()
	if _, err := client.ModelInfer(ctx, big()); err != nil {
		t.Fatalf("after the others finished: %v", err)
	}
}

// One connection runs at most maxStreams calls at once (HTTP/2's
// SETTINGS_MAX_CONCURRENT_STREAMS); its other calls wait in the client.
// Unbounded, one connection could make the node buffer a flow-control
// window for any number of streams.
func TestStreamsPerConnectionBounded(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	n := newTestNode(t, slow, slowSpec("slow", 4*maxStreams))
	var started atomic.Int64
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(n.models), Busy: func() { started.Add(1) }})
	client := inference.NewGRPCInferenceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const calls = maxStreams + 20
	done := make(chan error, calls)
	for range calls {
		go func() { _, err := client.ModelInfer(ctx, slowReq("slow")); done <- err }()
	}
	deadline := time.Now().Add(20 * time.Second)
	for started.Load() < maxStreams {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls started, want %d", started.Load(), maxStreams)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // room for any call past the bound to start
	if got := started.Load(); got != maxStreams {
		t.Fatalf("%d calls running on one connection, want at most %d", got, maxStreams)
	}
	close(slow.gate)
	for range calls {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
