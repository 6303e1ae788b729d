package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// A node under churn, as one that runs for weeks sees it: clients calling
// ModelInfer on ONNX deployments (some cancelled mid-flight, some with
// tiny deadlines, some malformed, some on a deployment that comes and
// goes), one deployment assigned and stopped over and over (some stops
// while it is still loading), deployment and health watches opened and
// dropped, unread or read. Once it stops, the node is back where it
// started: goroutines, open files, nothing queued, and a heap that does
// not grow with the rounds.
func TestChurnLeavesNothingBehind(t *testing.T) {
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	if err := onnxtest.WriteAll(dir); err != nil {
		t.Fatal(err)
	}
	cache, err := artifact.New(filepath.Join(dir, "artifacts"), 0, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the manager's Close
	m := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib})), cache, st, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	_, conn, _ := startServer(t, testConfig(t), Services{Deployments: NewDeployments(m), Inference: NewInference(m),
		Ready: func() bool { return Ready(m) }, Draining: m.StopWatches})
	dc := cyxwizpb.NewDeploymentServiceClient(conn)
	ic := inference.NewGRPCInferenceServiceClient(conn)
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	spec := func(name, file string, batch uint32, delayUs uint64) *cyxwizpb.DeploymentSpec {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		return &cyxwizpb.DeploymentSpec{ModelName: name, Format: "onnx",
			Model:    &cyxwizpb.Artifact{Uri: "file://" + filepath.Join(dir, file), Sha256: hex.EncodeToString(sum[:])},
			Batching: &cyxwizpb.BatchingConfig{MaxBatchSize: batch, MaxQueueDelayUs: delayUs, Instances: 2, QueueCapacity: 32}}
	}
	serving := func(id string) {
		t.Helper()
		ok := false
		waitFor(t, func() bool {
			st, err := dc.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: id})
			ok = err == nil && st.Status.State != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED
			return !ok || st.Status.State == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY ||
				st.Status.State == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING
		})
		if !ok {
			t.Fatalf("%s does not serve", id)
		}
	}
	for id, s := range map[string]*cyxwizpb.DeploymentSpec{
		"lin": spec("lin", "linear.onnx", 8, 500), "id": spec("id", "identity_float.onnx", 1, 0), "multi": spec("multi", "multi_io.onnx", 4, 0),
	} {
		if _, err := dc.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: s}); err != nil {
			t.Fatal(err)
		}
		serving(id)
	}
	request := func(model string, rows int) *inference.ModelInferRequest {
		switch model {
		case "id":
			return &inference.ModelInferRequest{ModelName: model, Inputs: []*inference.ModelInferRequest_InferInputTensor{{
				Name: "x", Datatype: "FP32", Shape: []int64{int64(rows), 4},
				Contents: &inference.InferTensorContents{Fp32Contents: make([]float32, 4*rows)}}}}
		case "multi":
			x := f32raw(make([]float32, 4*rows)...)
			return &inference.ModelInferRequest{ModelName: model, Inputs: []*inference.ModelInferRequest_InferInputTensor{
				{Name: "A", Datatype: "FP32", Shape: []int64{int64(rows), 4}}, {Name: "B", Datatype: "FP32", Shape: []int64{int64(rows), 4}}},
				RawInputContents: [][]byte{x, x}}
		}
		return &inference.ModelInferRequest{ModelName: model, Inputs: []*inference.ModelInferRequest_InferInputTensor{{
			Name: "X", Datatype: "FP32", Shape: []int64{int64(rows), 3}}}, RawInputContents: [][]byte{f32raw(make([]float32, 3*rows)...)}}
	}

	// round runs the clients while the churn deployment is assigned and
	// stopped n times.
	round := func(n int, seed uint64) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		loop := func(f func(rng *rand.Rand)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(n)))
				for {
					select {
					case <-stop:
						return
					default:
						f(rng)
					}
				}
			}()
		}
		for range 4 {
			loop(func(rng *rand.Rand) {
				req := request([]string{"lin", "id", "multi", "churn"}[rng.IntN(4)], 1+rng.IntN(4))
				if req.ModelName == "churn" {
					req = request("lin", 1)
					req.ModelName = "churn"
				}
				var cctx context.Context
				var cancel context.CancelFunc
				switch kind := rng.IntN(6); kind {
				case 0: // a deadline that ends while queued or running
					cctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(500))*time.Microsecond)
				case 1: // cancelled mid-flight
					var cancelNow context.CancelFunc
					cctx, cancelNow = context.WithCancel(ctx)
					timer := time.AfterFunc(time.Duration(rng.IntN(300))*time.Microsecond, cancelNow)
					cancel = func() { timer.Stop(); cancelNow() }
				default:
					cctx, cancel = context.WithTimeout(ctx, 5*time.Second)
					switch kind {
					case 2: // malformed
						req.Inputs[0].Shape = []int64{3, 3, 3}
					case 3:
						req.Inputs[0].Datatype = "NOPE"
					}
				}
				ic.ModelInfer(cctx, req)
				cancel()
			})
		}
		loop(func(rng *rand.Rand) { // deployment watches, read or left unread, then dropped
			wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			w, err := dc.WatchDeployments(wctx, &cyxwizpb.WatchDeploymentsRequest{Snapshot: rng.IntN(2) == 0})
			if err != nil {
				return
			}
			if rng.IntN(2) == 0 {
				for {
					if _, err := w.Recv(); err != nil {
						break
					}
				}
			}
			<-wctx.Done()
		})
		loop(func(rng *rand.Rand) { // health checks and watches
			hc.Check(ctx, &healthpb.HealthCheckRequest{Service: ReadinessService})
			wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
			defer cancel()
			if w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{Service: []string{"", ReadinessService}[rng.IntN(2)]}); err == nil {
				w.Recv()
			}
		})
		churn := spec("churn", "linear.onnx", 4, 200)
		for i := range n {
			if _, err := dc.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "churn", Spec: churn}); err != nil {
				t.Fatalf("assign %d: %v", i, err)
			}
			if i%3 != 0 { // every third stop finds it still coming up
				serving("churn")
				ic.ModelInfer(ctx, request("lin", 1))
			}
			if _, err := dc.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "churn"}); err != nil {
				t.Fatalf("stop %d: %v", i, err)
			}
		}
		close(stop)
		wg.Wait()
	}
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("no /proc/self/fd: %v", err)
		}
		return len(ents)
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	settled := func(what string, goroutines, files int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > goroutines || fds() > files {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d goroutines (%d before), %d open files (%d before)", what, runtime.NumGoroutine(), goroutines, fds(), files)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	round(3, 1) // warm-up: every kind of call has been made once
	goroutines, files := runtime.NumGoroutine(), fds()
	const n = 10
	round(n, 2)
	settled("after one round", goroutines, files)
	h1 := heap()
	round(n, 3)
	settled("after two rounds", goroutines, files)
	if h2 := heap(); h2 > h1+16<<20 {
		t.Errorf("heap grew from %d to %d bytes in a second round", h1, h2)
	}
	for _, id := range []string{"lin", "id", "multi"} {
		d, err := m.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		s := d.Status().Stats
		if s.Queued != 0 || s.Requests < s.Failures+s.Cancelled || s.Executions == 0 {
			t.Errorf("%s: %d requests, %d failures, %d cancelled, %d executions, %d still queued", id, s.Requests, s.Failures, s.Cancelled, s.Executions, s.Queued)
		}
	}
	if d, err := m.Get("churn"); err != nil || d.State() != deploy.Stopped {
		t.Errorf("churn: %v, want Stopped", err)
	}
}
