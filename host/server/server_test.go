package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Parse("[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[limits]\nshutdown_timeout = \"2s\"\n", t.TempDir(), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer runs a server until the test ends and returns a client conn.
func startServer(t *testing.T, cfg *config.Config, svc Services) (*Server, *grpc.ClientConn, func() error) {
	t.Helper()
	srv, err := New(cfg, svc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(10 * time.Second):
				stopErr = errors.New("server did not stop")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { conn.Close(); stop() })
	return srv, conn, stop
}

func TestHealthReflectionAndHTTP(t *testing.T) {
	srv, conn, _ := startServer(t, testConfig(t), Services{})
	ctx := context.Background()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}

	stream, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range r.GetListServicesResponse().GetService() {
		got[s.Name] = true
	}
	for _, want := range []string{"cyxwiz.protocol.DeploymentService", "cyxwiz.protocol.TerminalService", "inference.GRPCInferenceService", "grpc.health.v1.Health"} {
		if !got[want] {
			t.Errorf("reflection does not list %s (got %v)", want, got)
		}
	}

	for path, code := range map[string]int{"/healthz": 200, "/readyz": 200, "/nope": 404} {
		res, err := http.Get(fmt.Sprintf("http://%s%s", srv.HTTPAddr(), path))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != code {
			t.Errorf("GET %s = %d, want %d", path, res.StatusCode, code)
		}
	}
}

func TestUnimplementedSaysSo(t *testing.T) {
	_, conn, _ := startServer(t, testConfig(t), Services{})
	_, err := cyxwizpb.NewDeploymentServiceClient(conn).ListDeployments(context.Background(), &cyxwizpb.ListDeploymentsRequest{})
	if status.Code(err) != codes.Unimplemented || status.Convert(err).Message() == "" {
		t.Fatalf("want Unimplemented with a message, got %v", err)
	}
}

// blockingDeployments holds GetDeploymentStatus until released.
type blockingDeployments struct {
	cyxwizpb.UnimplementedDeploymentServiceServer
	entered chan struct{}
	release chan struct{}
}

func (b *blockingDeployments) GetDeploymentStatus(ctx context.Context, req *cyxwizpb.GetDeploymentStatusRequest) (*cyxwizpb.GetDeploymentStatusResponse, error) {
	close(b.entered)
	<-b.release
	return &cyxwizpb.GetDeploymentStatusResponse{Status: &cyxwizpb.DeploymentStatus{DeploymentId: req.DeploymentId}}, nil
}

func (b *blockingDeployments) ListDeployments(context.Context, *cyxwizpb.ListDeploymentsRequest) (*cyxwizpb.ListDeploymentsResponse, error) {
	return nil, fmt.Errorf("listing: %w", loaders.ErrInvalidInput)
}

// A graceful stop lets an in-flight call finish and refuses new ones.
func TestGracefulStopDrainsInFlight(t *testing.T) {
	b := &blockingDeployments{entered: make(chan struct{}), release: make(chan struct{})}
	_, conn, stop := startServer(t, testConfig(t), Services{Deployments: b})
	client := cyxwizpb.NewDeploymentServiceClient(conn)

	result := make(chan error, 1)
	go func() {
		resp, err := client.GetDeploymentStatus(context.Background(), &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "d1"})
		if err == nil && resp.Status.DeploymentId != "d1" {
			err = fmt.Errorf("wrong answer %v", resp)
		}
		result <- err
	}()
	<-b.entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()

	select {
	case err := <-stopped:
		t.Fatalf("server stopped before the in-flight call finished: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(b.release)
	if err := <-result; err != nil {
		t.Fatalf("in-flight call: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// A call that outlives the shutdown timeout is cut off and Run still returns.
func TestStopIsBounded(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.ShutdownTimeout = config.Duration(300 * time.Millisecond)
	b := &blockingDeployments{entered: make(chan struct{}), release: make(chan struct{})}
	defer close(b.release)
	_, conn, stop := startServer(t, cfg, Services{Deployments: b})
	go cyxwizpb.NewDeploymentServiceClient(conn).GetDeploymentStatus(context.Background(), &cyxwizpb.GetDeploymentStatusRequest{})
	<-b.entered
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stop took %v", d)
	}
}

func TestErrorsMapToCodes(t *testing.T) {
	b := &blockingDeployments{}
	_, conn, _ := startServer(t, testConfig(t), Services{Deployments: b})
	_, err := cyxwizpb.NewDeploymentServiceClient(conn).ListDeployments(context.Background(), &cyxwizpb.ListDeploymentsRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument, got %v", err)
	}
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("x: %w", context.Canceled), codes.Canceled},
		{fmt.Errorf("load m.onnx: %w", loaders.ErrInvalidModel), codes.FailedPrecondition},
		{fmt.Errorf("%w: gguf", loaders.ErrUnavailable), codes.FailedPrecondition},
		{fmt.Errorf("deploy d: %w", deploy.ErrClosed), codes.Unavailable},
		{fmt.Errorf("swap guests of d: guest post: %w", artifact.ErrChecksum), codes.FailedPrecondition},
		{fmt.Errorf("swap guests of d: guest post: %w", artifact.ErrFetch), codes.Unavailable},
		{fmt.Errorf("swap guests of d: guest post: %w", artifact.ErrTooLarge), codes.ResourceExhausted},
		{status.Error(codes.NotFound, "kept"), codes.NotFound},
		{errors.New("boom"), codes.Internal},
	} {
		if got := status.Code(ToStatus(tc.err)); got != tc.code {
			t.Errorf("%v: got %v, want %v", tc.err, got, tc.code)
		}
	}
}

func TestPortInUse(t *testing.T) {
	srv, _, _ := startServer(t, testConfig(t), Services{})
	cfg := testConfig(t)
	cfg.Listen.GRPC = srv.GRPCAddr().String()
	if _, err := New(cfg, Services{}, quietLog()); err == nil {
		t.Fatal("second server on the same port: no error")
	}
}

// TestNewFailureLeavesNothingRunning: a New that cannot bind its gRPC or
// HTTP port returns without the gRPC server's stream workers (they used to
// start before the listeners were bound, and nothing stopped them).
func TestNewFailureLeavesNothingRunning(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, port := range []string{"grpc", "http"} {
		t.Run(port, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			cfg := testConfig(t)
			if port == "grpc" {
				cfg.Listen.GRPC = busy.Addr().String()
			} else {
				cfg.Listen.HTTP = busy.Addr().String()
			}
			if _, err := New(cfg, Services{}, quietLog()); err == nil {
				t.Fatalf("%s port in use: no error", port)
			}
		})
	}
}

// TestBusyIsCalledPerCall: every unary and streaming call reports traffic
// through Services.Busy (what holds the CPU latency limit).
func TestBusyIsCalledPerCall(t *testing.T) {
	var calls atomic.Int64
	_, conn, _ := startServer(t, testConfig(t), Services{Busy: func() { calls.Add(1) }})
	ctx := context.Background()
	for range 3 {
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := calls.Load(); got != 3 {
		t.Fatalf("Busy called %d times for 3 unary calls", got)
	}
	stream, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := calls.Load(); got != 4 {
		t.Fatalf("Busy called %d times after a stream, want 4", got)
	}
}

// Close releases a server that never ran: both ports can be bound again,
// no goroutine is left, and nothing says "serving" (a start-up that failed
// after New released them by running with a cancelled context, which
// logged that the node was serving).
func TestCloseUnserved(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var logs bytes.Buffer
	srv, err := New(testConfig(t), Services{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{srv.GRPCAddr().String(), srv.HTTPAddr().String()}
	srv.Close()
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s still bound after Close: %v", a, err)
		}
		l.Close()
	}
	if strings.Contains(logs.String(), "serving") {
		t.Errorf("a server that never ran logged:\n%s", logs.String())
	}
}

// With HTTP off the start-up line says so ("http=<nil>" before).
func TestServingLogHTTPOff(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listen.HTTP = ""
	var logs syncBuffer
	srv, err := New(cfg, Services{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "msg=serving") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if line := logs.String(); !strings.Contains(line, "http=off") || strings.Contains(line, "<nil>") {
		t.Errorf("serving line with HTTP off:\n%s", line)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The health service answers readiness under ReadinessService, following
// Services.Ready (as /readyz does), and liveness under "": the health
// service said SERVING from start whatever Ready said, so a client or a
// probe using it could not tell a node still loading its models.
func TestHealthReadinessFollowsReady(t *testing.T) {
	var ready atomic.Bool
	_, conn, _ := startServer(t, testConfig(t), Services{Ready: ready.Load})
	ctx := context.Background()
	hc := healthpb.NewHealthClient(conn)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("check %q: %v", service, err)
		}
		return resp.Status
	}
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: ReadinessService})
	if err != nil {
		t.Fatal(err)
	}
	next := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		resp, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Status
	}
	if got := next(); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("readiness while not ready: %v", got)
	}
	if got := check(""); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness while not ready: %v, want SERVING", got)
	}
	ready.Store(true)
	if got := next(); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("readiness once ready: %v", got)
	}
	if got := check(ReadinessService); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("check once ready: %v", got)
	}
	ready.Store(false)
	if got := next(); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("readiness when no longer ready: %v", got)
	}
}
