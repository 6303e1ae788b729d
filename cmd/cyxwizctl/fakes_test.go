package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// fakeServe runs a bare gRPC server with whatever reg registers.
func fakeServe(t *testing.T, reg func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	reg(s)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// call is one request a fake received, with the time left to its deadline
// (-1 without one).
type call[R any] struct {
	req  R
	left time.Duration
}

func newCall[R any](ctx context.Context, req R) call[R] {
	left := time.Duration(-1)
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	return call[R]{req, left}
}

// fakeDeployments is a DeploymentService that answers an assignment with
// state, then sends events on the watch stream.
type fakeDeployments struct {
	cyxwizpb.UnimplementedDeploymentServiceServer
	state   cyxwizpb.DeploymentState   // what AssignDeployment answers
	events  []cyxwizpb.DeploymentState // what the watch sends after the assignment
	assigns chan call[*cyxwizpb.AssignDeploymentRequest]
	stops   chan call[*cyxwizpb.StopDeploymentRequest]
	watches chan call[*cyxwizpb.WatchDeploymentsRequest]
	once    sync.Once
	done    chan struct{} // closed by the first assignment
}

// startFakeDeployments serves a fakeDeployments that answers state and
// then sends events.
func startFakeDeployments(t *testing.T, state cyxwizpb.DeploymentState, events ...cyxwizpb.DeploymentState) (string, *fakeDeployments) {
	t.Helper()
	f := &fakeDeployments{state: state, events: events, done: make(chan struct{}),
		assigns: make(chan call[*cyxwizpb.AssignDeploymentRequest], 10),
		stops:   make(chan call[*cyxwizpb.StopDeploymentRequest], 10),
		watches: make(chan call[*cyxwizpb.WatchDeploymentsRequest], 10),
	}
	return fakeServe(t, func(s *grpc.Server) { cyxwizpb.RegisterDeploymentServiceServer(s, f) }), f
}

func (f *fakeDeployments) AssignDeployment(ctx context.Context, r *cyxwizpb.AssignDeploymentRequest) (*cyxwizpb.AssignDeploymentResponse, error) {
	f.assigns <- newCall(ctx, r)
	resp := &cyxwizpb.AssignDeploymentResponse{Status: &cyxwizpb.DeploymentStatus{DeploymentId: r.DeploymentId,
		State: f.state, Message: "accepted", UpdatedAt: timestamppb.Now()}}
	f.once.Do(func() { close(f.done) })
	return resp, nil
}

func (f *fakeDeployments) WatchDeployments(r *cyxwizpb.WatchDeploymentsRequest, s grpc.ServerStreamingServer[cyxwizpb.DeploymentEvent]) error {
	f.watches <- newCall(s.Context(), r)
	select {
	case <-f.done:
	case <-s.Context().Done():
		return nil
	}
	time.Sleep(time.Millisecond) // events after the assignment's time
	for _, st := range f.events {
		ev := &cyxwizpb.DeploymentEvent{Status: &cyxwizpb.DeploymentStatus{DeploymentId: "d", State: st,
			Message: stateName(st), UpdatedAt: timestamppb.Now()}}
		if err := s.Send(ev); err != nil {
			return err
		}
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeDeployments) StopDeployment(ctx context.Context, r *cyxwizpb.StopDeploymentRequest) (*cyxwizpb.StopDeploymentResponse, error) {
	f.stops <- newCall(ctx, r)
	return &cyxwizpb.StopDeploymentResponse{Status: &cyxwizpb.DeploymentStatus{DeploymentId: r.DeploymentId,
		State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED}}, nil
}

func (f *fakeDeployments) GetDeploymentStatus(ctx context.Context, r *cyxwizpb.GetDeploymentStatusRequest) (*cyxwizpb.GetDeploymentStatusResponse, error) {
	return &cyxwizpb.GetDeploymentStatusResponse{Status: &cyxwizpb.DeploymentStatus{DeploymentId: r.DeploymentId, State: f.state,
		Spec: &cyxwizpb.DeploymentSpec{ModelName: r.DeploymentId, Format: "guest", Guests: []*cyxwizpb.GuestModule{
			{Name: "g", Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS, cyxwizpb.GuestRole_GUEST_ROLE_BATCH_POLICY},
				Artifact: &cyxwizpb.Artifact{Uri: "file:///g.wasm"}},
		}}}}, nil
}

// tempFile writes content to a new file and returns its path.
func tempFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
