package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// The daemon is killed while a StopDeployment drains requests that are
// still running (the stop's drain_timeout is long). The Central Server asked
// for the stop: after the restart the deployment is Stopped, its model is
// not served, the other deployment serves again without another assign,
// and assigning the stopped one again brings it back.
func TestKillDuringStopStaysStopped(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	srv := artifacttest.New(t)
	n := startDaemon(t, bin, cfg)

	slow := serveModel(srv, "slow", bigModel())
	other := serveModel(srv, "other", linearModel(3))
	n.assignBatching(t, slow, &cyxwizpb.BatchingConfig{MaxBatchSize: 1, Instances: 1})
	n.assign(t, other)
	n.waitServing(t, slow.id)
	n.waitServing(t, other.id)

	// Requests that keep the model busy: a few thousand rows each through
	// a 2048×2048 layer, one at a time (one instance).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const rows = 2048
	x := make([]float32, rows*2048)
	req := &inference.ModelInferRequest{ModelName: slow.name,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{rows, 2048}}},
		RawInputContents: [][]byte{f32bytes(x)}}
	answered := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := n.infer.ModelInfer(ctx, req, grpc.MaxCallRecvMsgSize(64<<20))
			answered <- err
		}()
	}
	// One answer: the others were sent with it and wait their turn.
	if err := <-answered; err != nil {
		t.Fatalf("infer %s: %v", slow.name, err)
	}

	w, stopWatch := n.watch(t, slow.id)
	defer stopWatch()
	stopErr := make(chan error, 1)
	go func() {
		_, err := n.deployments.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: slow.id, DrainTimeout: durationpb.New(crashWait)})
		stopErr <- err
	}()
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("watch %s: %v", slow.id, err)
		}
		if s := ev.Status.State; s == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPING {
			break
		} else if s == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED {
			t.Log("the stop ended before the watch saw it draining")
			break
		}
	}
	n.kill(t)
	if err := <-stopErr; err == nil {
		t.Log("the stop returned before the kill")
	} else {
		t.Logf("killed during the stop: %v", err)
	}

	n = startDaemon(t, bin, cfg)
	n.waitServing(t, other.id)
	n.check(t, other)
	qctx, qcancel := context.WithTimeout(context.Background(), crashWait)
	defer qcancel()
	st, err := n.deployments.GetDeploymentStatus(qctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: slow.id})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.State != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED {
		t.Errorf("%s after a kill during its stop: %v (%s), want Stopped", slow.id, st.Status.State, st.Status.Message)
	}
	list, err := n.deployments.ListDeployments(qctx, &cyxwizpb.ListDeploymentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Deployments) != 2 {
		t.Errorf("%d deployments after the restart, want 2: %v", len(list.Deployments), list.Deployments)
	}
	_, err = n.infer.ModelInfer(qctx, &inference.ModelInferRequest{ModelName: slow.name,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 2048}}},
		RawInputContents: [][]byte{f32bytes(x[:2048])}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("infer on the stopped %s: %v, want NotFound", slow.name, err)
	}
	// The Central Server starts it again with the same spec.
	n.assignBatching(t, slow, &cyxwizpb.BatchingConfig{MaxBatchSize: 1, Instances: 1})
	n.waitServing(t, slow.id)
	n.check(t, slow)
	n.kill(t)
}

// assignBatching is assign with a batching config.
func (d *daemon) assignBatching(t *testing.T, m crashModel, b *cyxwizpb.BatchingConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	_, err := d.deployments.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{
		DeploymentId: m.id,
		Spec: &cyxwizpb.DeploymentSpec{ModelName: m.name, Format: "onnx", Batching: b,
			Model: &cyxwizpb.Artifact{Uri: m.uri, Sha256: m.sha256, SizeBytes: int64(len(m.data))}},
	})
	if err != nil {
		t.Fatalf("assign %s: %v", m.id, errors.Unwrap(err))
	}
}

// The operator edits node.toml between restarts. A [[models]] entry added
// under the model name of a stored deployment keeps its name: the stored
// one comes back Failed saying which deployment has the name, and the log
// says so. With the entry removed again, the stored deployment serves again
// without another assign. A watch open across a kill ends with UNAVAILABLE
// and a new one starts with a snapshot of every deployment.
func TestRestartWithEditedModels(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	plain, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := artifacttest.New(t)
	n := startDaemon(t, bin, cfg)
	x := serveModel(srv, "m", linearModel(1))
	x.id = "dep-x"
	n.assign(t, x)
	n.waitServing(t, x.id)

	wctx, wcancel := context.WithTimeout(context.Background(), crashWait)
	defer wcancel()
	w, err := n.deployments.WatchDeployments(wctx, &cyxwizpb.WatchDeploymentsRequest{Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := w.Recv(); err != nil || !ev.Snapshot {
		t.Fatalf("watch: first event %v, %v; want the snapshot", ev, err)
	}
	n.cmd.Process.Kill() // n.kill closes the client's connection too
	<-n.exited
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("watch across the kill: %v, want UNAVAILABLE", err)
	}
	n.kill(t)

	// The operator declares "m" in node.toml.
	static := linearModel(5)
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(path, static.data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, fmt.Appendf(plain, "\n[[models]]\nname = %q\nformat = \"onnx\"\npath = %q\n", "m", path), 0o644); err != nil {
		t.Fatal(err)
	}
	n = startDaemon(t, bin, cfg)
	n.waitServing(t, "m")
	n.check(t, crashModel{testModel: static, id: "m", name: "m"})
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	st, err := n.deployments.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: x.id})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.State != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED || !strings.Contains(st.Status.Message, `deployment "m"`) {
		t.Errorf("%s with node.toml serving its name: %v %q, want Failed naming deployment \"m\"", x.id, st.Status.State, st.Status.Message)
	}
	if !n.logged("deployment=dep-x") || !n.logged(`served by deployment \"m\"`) {
		t.Error("the log does not say why dep-x is not served")
	}
	// A new watch starts with a snapshot of both.
	w, err = n.deployments.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		ev, err := w.Recv()
		if err != nil || !ev.Snapshot {
			t.Fatalf("watch after the restart: %v, %v; want a snapshot of 2 deployments (have %v)", ev, err, seen)
		}
		seen[ev.Status.DeploymentId] = true
	}
	n.kill(t)

	// The entry goes again: dep-x serves without another assign.
	if err := os.WriteFile(cfg, plain, 0o644); err != nil {
		t.Fatal(err)
	}
	n = startDaemon(t, bin, cfg)
	n.waitServing(t, x.id)
	n.check(t, x)
	n.kill(t)
}
