package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// An open watch stream does not hold the node's shutdown for the whole
// drain timeout: draining ends watches first (UNAVAILABLE), then the calls
// still running get their time.
func TestDrainEndsWatchStreams(t *testing.T) {
	models := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(echoLoader{}), nil, nil, quietLog())
	t.Cleanup(func() { models.Close(context.Background()) })
	if _, err := models.Assign("echo", deploy.Spec{Name: "echo", Format: "echo",
		Model: artifact.Artifact{URI: "file://" + writeFile(t, t.TempDir(), "m.echo", []byte("echo"))}}, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Limits.ShutdownTimeout = cfg.Limits.ShutdownTimeout * 15 // 30 s
	_, conn, stop := startServer(t, cfg, Services{Deployments: NewDeployments(models), Draining: models.StopWatches})
	stream, err := cyxwizpb.NewDeploymentServiceClient(conn).WatchDeployments(context.Background(), &cyxwizpb.WatchDeploymentsRequest{Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the snapshot: the call is in the server
		t.Fatal(err)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("shutdown took %v with a watch open (drain timeout 30s)", took)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Errorf("watch after shutdown: %v, want UNAVAILABLE", err)
			}
			break
		}
	}
}

// A health watch (grpc-go's client-side health checking, a load
// balancer) ends when the drain starts: it was never ended, and an idle
// one held every graceful stop for the whole shutdown timeout.
func TestDrainEndsHealthWatches(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.ShutdownTimeout = cfg.Limits.ShutdownTimeout * 15 // 30 s
	_, conn, stop := startServer(t, cfg, Services{})
	for _, service := range []string{"", ReadinessService} {
		w, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := w.Recv(); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("watch %q: %v %v", service, resp, err)
		}
		defer func() {
			for {
				resp, err := w.Recv()
				if err != nil {
					if status.Code(err) != codes.Unavailable {
						t.Errorf("watch %q after the drain: %v, want UNAVAILABLE", service, err)
					}
					return
				}
				if resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
					t.Errorf("watch %q during the drain: %v", service, resp.Status)
				}
			}
		}()
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("shutdown took %v with health watches open (drain timeout 30s)", took)
	}
}
