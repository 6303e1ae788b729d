package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// apiNode is a manager over the slow test model, and a file:// URI it loads.
func apiNode(t *testing.T, cfg deploy.Config, slow *slowModel) (*deploy.Manager, *Deployments, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.bin")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := deploy.NewManager(cfg, loaders.NewRegistry(slowLoader{slow}), testCache(t), nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	return m, NewDeployments(m), "file://" + p
}

func apiSpec(uri string) *cyxwizpb.DeploymentSpec {
	return &cyxwizpb.DeploymentSpec{ModelName: "m", Format: "slow", Model: &cyxwizpb.Artifact{Uri: uri, Sha256: fileDigest(uri)}}
}

// fileDigest is the SHA-256 of the file a file:// URI names, as a caller
// assigning it over gRPC must give it; "" for other URIs or no such file.
func fileDigest(uri string) string {
	return fileDigestOr(uri, "")
}

// testCache is an artifact cache for a test's deployment manager: file://
// artifacts assigned over gRPC come with their digest, and are fetched
// into it.
func testCache(t *testing.T) *artifact.Cache {
	t.Helper()
	c, err := artifact.New(filepath.Join(t.TempDir(), "artifacts"), 0, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fileDigestOr(uri, none string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "file" {
		return none
	}
	b, err := os.ReadFile(u.Path)
	if err != nil {
		return none
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func apiWait(t *testing.T, m *deploy.Manager, id string) deploy.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.WaitFor(ctx, id, deploy.Settled)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Numbers too large for the node's types are refused as too large, not
// wrapped into small ones (2^63 µs of queue delay became 0).
func TestHugeSpecNumbersAreRefused(t *testing.T) {
	_, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	for _, us := range []uint64{1 << 63, 18446744073709552} {
		p := apiSpec(uri)
		p.Batching = &cyxwizpb.BatchingConfig{MaxBatchSize: 8, MaxQueueDelayUs: us}
		_, err := s.AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p})
		if status.Code(ToStatus(err)) != codes.InvalidArgument {
			t.Errorf("max_queue_delay_us %d: %v, want InvalidArgument", us, err)
		}
	}
	if d := SpecFromProto(&cyxwizpb.DeploymentSpec{Resources: &cyxwizpb.ResourceRequest{MemoryBytes: 1 << 63}}).Resources.MemoryBytes; d < 0 {
		t.Errorf("memory_bytes 2^63 became %d", d)
	}
}

// Re-assigning a deployment while its status is read races with nothing
// (Equal must not write into the deployment's spec).
func TestReassignWhileReadingStatus(t *testing.T) {
	_, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	p := apiSpec(uri)
	p.Guests = []*cyxwizpb.GuestModule{{Name: "pre", Artifact: &cyxwizpb.Artifact{Uri: uri, Sha256: fileDigest(uri)},
		Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}}}
	ctx := context.Background()
	if _, err := s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := time.Now().Add(300 * time.Millisecond)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for time.Now().Before(stop) {
			s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p})
		}
	}()
	go func() {
		defer wg.Done()
		for time.Now().Before(stop) {
			s.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "d"})
		}
	}()
	wg.Wait()
}

// A stopped id takes a new spec: what a client that was told "stop it
// first" expects.
func TestStoppedIDTakesNewSpec(t *testing.T) {
	m, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	ctx := context.Background()
	if _, err := s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "d")
	p := apiSpec(uri)
	p.ModelVersion = "2"
	if _, err := s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p}); status.Code(ToStatus(err)) != codes.AlreadyExists {
		t.Fatalf("new spec for a running id: %v, want AlreadyExists", err)
	}
	if _, err := s.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "d"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p}); err != nil {
		t.Fatalf("new spec for the stopped id: %v", err)
	}
	if st := apiWait(t, m, "d"); !st.State.Serving() || st.Spec.Version != "2" {
		t.Fatalf("after re-assign: %v version %q", st.State, st.Spec.Version)
	}
}

// A request that never returns does not hold a Stop past its drain timeout
// and its caller's deadline.
func TestStopReturnsWithAStuckRequest(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	defer close(slow.gate)
	m, s, uri := apiNode(t, deploy.Config{DrainTimeout: 100 * time.Millisecond}, slow)
	ctx := context.Background()
	if _, err := s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "d")
	d, err := m.Model("m", "")
	if err != nil {
		t.Fatal(err)
	}
	go d.Infer(ctx, []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1, 2}, []float32{1, 2})}, nil) // no deadline
	for slow.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := s.StopDeployment(cctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "d", DrainTimeout: durationpb.New(100 * time.Millisecond)})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Stop (drain 100ms, deadline 500ms) still blocked after 5s; state %v", d.State())
	}
	if st := d.State(); st != deploy.Stopped {
		t.Errorf("after Stop: %v", st)
	}
}

// TestStopDrainTimeoutChecked: a negative or over-long drain_timeout is
// InvalidArgument, and the deployment keeps serving.
func TestStopDrainTimeoutChecked(t *testing.T) {
	m, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	ctx := context.Background()
	if _, err := s.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "d")
	for _, d := range []*durationpb.Duration{{Seconds: -1}, durationpb.New(2 * time.Hour), {Seconds: 1, Nanos: -5}} {
		_, err := s.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "d", DrainTimeout: d})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("drain_timeout %v: %v, want InvalidArgument", d, err)
		}
	}
	if st, _ := m.Get("d"); !st.State().Serving() {
		t.Fatalf("after refused stops: %v", st.State())
	}
}

// A guest call_timeout that is no valid duration, or is negative, is
// refused like a stop's drain_timeout: it was taken as the node's default
// (negative) or as no timeout at all (out of range).
func TestGuestCallTimeoutChecked(t *testing.T) {
	_, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	for _, d := range []*durationpb.Duration{
		{Seconds: -5},
		{Seconds: 1, Nanos: -1},
		{Seconds: 315576000001},
		{Nanos: 1_000_000_000},
	} {
		p := apiSpec(uri)
		p.Guests = []*cyxwizpb.GuestModule{{Name: "pre", Artifact: &cyxwizpb.Artifact{Uri: uri, Sha256: fileDigest(uri)},
			Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}, CallTimeout: d}}
		_, err := s.AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p})
		if status.Code(ToStatus(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "guests[0].call_timeout") {
			t.Errorf("call_timeout %v: %v, want InvalidArgument naming guests[0].call_timeout", d, err)
		}
	}
}

// A guest's instances are bounded (guest.MaxInstances): 4 billion were
// accepted, each instance free to hold its memory limit of guest memory.
func TestGuestInstancesBounded(t *testing.T) {
	_, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	p := apiSpec(uri)
	p.Guests = []*cyxwizpb.GuestModule{{Name: "pre", Artifact: &cyxwizpb.Artifact{Uri: uri, Sha256: fileDigest(uri)},
		Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}, Instances: 4_000_000_000}}
	_, err := s.AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p})
	if status.Code(ToStatus(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "guests[0].instances") {
		t.Errorf("4e9 guest instances: %v, want InvalidArgument naming guests[0].instances", err)
	}
}

// resources.cpu_threads is bounded as node.toml's thread counts are (4e9
// was accepted).
func TestCPUThreadsBounded(t *testing.T) {
	_, s, uri := apiNode(t, deploy.Config{}, &slowModel{})
	p := apiSpec(uri)
	p.Resources = &cyxwizpb.ResourceRequest{CpuThreads: 4_000_000_000}
	_, err := s.AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: p})
	if status.Code(ToStatus(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "resources.cpu_threads") {
		t.Errorf("4e9 cpu threads: %v, want InvalidArgument naming resources.cpu_threads", err)
	}
}
