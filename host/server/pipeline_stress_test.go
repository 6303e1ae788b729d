package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// Pipeline deployments under load, end to end over gRPC, as the Central
// Server and clients drive them at once: clients call ModelInfer on two
// deployments of linear.onnx whose postprocess guest (cls-post) turns the
// scores into labels, one ("front") with a preprocess guest that calls the
// other ("back") first, the other with a batch-policy guest; meanwhile the
// Central Server swaps their guests (new labels), stops and re-assigns
// "back", and watches both. Every request ends with the right answer (the
// labels of one generation of guests, the right class and score) or with
// a code that says the deployment is going away (never INTERNAL, never a
// hang); every watch sees each deployment's states in order; nothing is
// left behind (goleak, in TestMain).
func TestPipelinesUnderSwapStopAndLoad(t *testing.T) {
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	if err := onnxtest.WriteAll(dir); err != nil {
		t.Fatal(err)
	}
	artifactOf := func(name string, b []byte) *cyxwizpb.Artifact {
		p := filepath.Join(dir, name)
		if b != nil {
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			var err error
			if b, err = os.ReadFile(p); err != nil {
				t.Fatal(err)
			}
		}
		sum := sha256.Sum256(b)
		return &cyxwizpb.Artifact{Uri: "file://" + p, Sha256: hex.EncodeToString(sum[:])}
	}
	model := artifactOf("linear.onnx", nil)
	post := artifactOf("post.wasm", guesttest.Build(t, "guests/examples/cls-post"))
	policy := artifactOf("policy.wasm", guesttest.Build(t, "guests/examples/latency-batch"))
	call := artifactOf("call.wasm", guesttest.Build(t, "host/deploy/testdata/callmodel"))

	rt, err := guest.NewRuntime(context.Background(), guest.Config{
		CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache"), CallTimeout: 5 * time.Second}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) }) // after the manager's Close
	cache, err := artifact.New(filepath.Join(dir, "artifacts"), 0, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 1, Load: loaders.Options{IntraOpThreads: 1}},
		loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib})), cache, st, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	// What the server logs: an error mapped to INTERNAL is logged.
	var logged syncBuffer
	srv, err := New(testConfig(t), Services{Deployments: NewDeployments(m), Inference: NewInference(m),
		Ready: func() bool { return Ready(m) }, Draining: m.StopWatches}, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopSrv := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Run(srvCtx) }()
	t.Cleanup(func() {
		stopSrv()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	dc := cyxwizpb.NewDeploymentServiceClient(conn)
	ic := inference.NewGRPCInferenceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	role := func(r cyxwizpb.GuestRole) []cyxwizpb.GuestRole { return []cyxwizpb.GuestRole{r} }
	labels := func(gen int) string { return fmt.Sprintf("g%d-c0,g%d-c1", gen, gen) }
	spec := func(id string, gen int) *cyxwizpb.DeploymentSpec {
		s := &cyxwizpb.DeploymentSpec{ModelName: id, Format: "onnx", Model: model,
			Config:   map[string]string{"labels": labels(gen), "max_wait_us": "200"},
			Batching: &cyxwizpb.BatchingConfig{MaxBatchSize: 512, MaxQueueDelayUs: 200, Instances: 1, QueueCapacity: 64}}
		s.Guests = append(s.Guests, &cyxwizpb.GuestModule{Name: "post", Artifact: post, Roles: role(cyxwizpb.GuestRole_GUEST_ROLE_POSTPROCESS)})
		if id == "front" {
			s.Config["target"] = "back"
			s.AllowedDeployments = []string{"back"}
			s.Guests = append(s.Guests, &cyxwizpb.GuestModule{Name: "call", Artifact: call, Roles: role(cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS)})
		} else {
			s.Guests = append(s.Guests, &cyxwizpb.GuestModule{Name: "policy", Artifact: policy, Roles: role(cyxwizpb.GuestRole_GUEST_ROLE_BATCH_POLICY)})
		}
		return s
	}
	ids := []string{"front", "back"}

	// The watch starts before anything is assigned: it sees every change.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch, err := dc.WatchDeployments(wctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: ids, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Header(); err != nil {
		t.Fatal(err)
	}
	var seenMu sync.Mutex
	seen := map[string][]cyxwizpb.DeploymentState{}
	lastLabels := map[string]string{} // of each deployment's last event
	event := make(chan struct{}, 1)   // a new event was seen
	watched := make(chan error, 1)
	go func() {
		for {
			e, err := watch.Recv()
			if err != nil {
				watched <- err
				return
			}
			seenMu.Lock()
			seen[e.Status.DeploymentId] = append(seen[e.Status.DeploymentId], e.Status.State)
			lastLabels[e.Status.DeploymentId] = e.Status.GetSpec().GetConfig()["labels"]
			seenMu.Unlock()
			select {
			case event <- struct{}{}:
			default:
			}
		}
	}()

	serving := func(id string) {
		t.Helper()
		st, err := m.WaitFor(ctx, id, deploy.Settled)
		if err != nil || !st.State.Serving() {
			t.Fatalf("%s: %v: %s (%v)", id, st.State, st.Message, err)
		}
	}
	for _, id := range ids {
		if _, err := dc.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: spec(id, 0)}); err != nil {
			t.Fatal(err)
		}
		serving(id)
	}

	var (
		mu       sync.Mutex
		answer   = sync.NewCond(&mu) // answered grew
		problems []string
		answered = map[string]int{}
		codesOf  = map[codes.Code]int{}
	)
	problem := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	// check checks one answer: one generation's labels, the right class
	// and score for each row of x.
	check := func(id string, x []float32, resp *inference.ModelInferResponse) error {
		rows := len(x) / 3
		var label []string
		var score []float32
		for _, o := range resp.Outputs {
			switch o.Name {
			case "label":
				for _, b := range o.GetContents().GetBytesContents() {
					label = append(label, string(b))
				}
			case "score":
				score = o.GetContents().GetFp32Contents()
			}
		}
		if resp.ModelName != id || len(label) != rows || len(score) != rows {
			return fmt.Errorf("%s answered %s with %d labels and %d scores for %d rows", id, resp.ModelName, len(label), len(score), rows)
		}
		gen, _, _ := strings.Cut(label[0], "-")
		for r := range rows {
			x0, x1, x2 := x[3*r], x[3*r+1], x[3*r+2]
			y := []float32{x0 + 3*x1 + 5*x2 + 0.5, 2*x0 + 4*x1 + 6*x2 - 1}
			class := 0
			if y[1] > y[0] {
				class = 1
			}
			if want := fmt.Sprintf("%s-c%d", gen, class); label[r] != want {
				return fmt.Errorf("%s row %d of %v: label %q, want %q (labels %v)", id, r, x, label[r], want, label)
			}
			if math.Abs(float64(score[r]-y[class])) > 1e-3 {
				return fmt.Errorf("%s row %d of %v: score %v, want %v", id, r, x, score[r], y[class])
			}
		}
		return nil
	}

	// served waits for n more right answers from id, so that the Central
	// Server's changes fall among requests.
	servedBy := func(id string, n int) {
		mu.Lock()
		defer mu.Unlock()
		for want := answered[id] + n; answered[id] < want && ctx.Err() == nil; {
			answer.Wait()
		}
	}
	stop := make(chan struct{})
	var clients sync.WaitGroup
	for c := range 4 {
		clients.Add(1)
		go func() {
			defer clients.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := ids[rng.IntN(2)]
				rows := 1 + rng.IntN(3)
				if rng.IntN(8) == 0 {
					rows = 400 // past the inline limit: guests get a host tensor handle
				}
				x := make([]float32, 3*rows)
				for i := range x {
					x[i] = float32(rng.IntN(9) - 4)
				}
				// Sums of 1.5 tie no row: the class is never in doubt.
				req := &inference.ModelInferRequest{ModelName: id, Inputs: []*inference.ModelInferRequest_InferInputTensor{{
					Name: "X", Datatype: "FP32", Shape: []int64{int64(rows), 3}, Contents: &inference.InferTensorContents{Fp32Contents: x}}}}
				// One in four gives up early: its deadline ends while it
				// is in a guest, queued or running.
				timeout, hostile := 10*time.Second, rng.IntN(4) == 0
				if hostile {
					timeout = time.Duration(rng.IntN(3000)) * time.Microsecond
				}
				cctx, cancel := context.WithTimeout(ctx, timeout)
				resp, err := ic.ModelInfer(cctx, req)
				cancel()
				code := status.Code(err)
				mu.Lock()
				codesOf[code]++
				if err == nil {
					answered[id]++
					answer.Broadcast()
				}
				mu.Unlock()
				switch code {
				case codes.OK:
					if err := check(id, x, resp); err != nil {
						problem("%v", err)
					}
				case codes.DeadlineExceeded:
					if !hostile {
						problem("ModelInfer %s: %v", id, err)
					}
				case codes.Unavailable, codes.FailedPrecondition, codes.NotFound:
					// The deployment (or the one its guest calls) is going
					// away or coming back.
				default:
					problem("ModelInfer %s: %v", id, err)
				}
				if err != nil {
					// Not a spin on a deployment that is loading: it
					// would starve the loads of the 2 cores the tests get.
					select {
					case <-stop:
					case <-time.After(time.Millisecond):
					}
				}
			}
		}()
	}

	// The Central Server: guest swaps on both, while "back" is stopped and
	// assigned again; each generation of labels is new.
	var central sync.WaitGroup
	var genMu sync.Mutex
	gen := map[string]int{"front": 0, "back": 0}
	next := 0
	assign := func(id string, newGen bool) {
		genMu.Lock()
		if newGen {
			next++
			gen[id] = next
		}
		s := spec(id, gen[id])
		genMu.Unlock()
		_, err := dc.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: s})
		switch status.Code(err) {
		case codes.OK:
		case codes.Unavailable, codes.AlreadyExists:
			// A swap cut by a stop, or one of a deployment still
			// loading: only "back" is stopped.
			if id != "back" {
				problem("swap %s: %v", id, err)
			}
		default:
			problem("assign %s: %v", id, err)
		}
	}
	central.Add(3)
	for range 2 { // two callers swapping at once
		go func() {
			defer central.Done()
			for i := range 12 {
				assign(ids[i%2], true)
				servedBy("front", 2)
			}
		}()
	}
	go func() {
		defer central.Done()
		for i := range 8 {
			req := &cyxwizpb.StopDeploymentRequest{DeploymentId: "back"}
			if i%2 == 1 { // a stop that cuts the requests in flight short
				req.DrainTimeout = durationpb.New(time.Microsecond)
			}
			if _, err := dc.StopDeployment(ctx, req); err != nil {
				problem("stop back: %v", err)
			}
			assign("back", false)
			servedBy("back", 4)
		}
	}()
	// Others read the deployments meanwhile: what they list and what the
	// models declare (the postprocess guest's outputs, whichever guests
	// serve).
	readers := make(chan struct{})
	var reading sync.WaitGroup
	reading.Add(1)
	go func() {
		defer reading.Done()
		for {
			select {
			case <-readers:
				return
			default:
			}
			if _, err := dc.ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{}); err != nil {
				problem("list: %v", err)
			}
			for _, id := range ids {
				md, err := ic.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: id})
				switch status.Code(err) {
				case codes.OK:
					if len(md.Outputs) != 2 || md.Outputs[0].Name != "label" || md.Outputs[1].Name != "score" {
						problem("metadata %s: outputs %v", id, md.Outputs)
					}
				case codes.Unavailable, codes.NotFound:
				default:
					problem("metadata %s: %v", id, err)
				}
			}
		}
	}()
	central.Wait()
	close(readers)
	reading.Wait()
	// "back" serves its last spec again (a swap after the stopper's last
	// assign may have found it loading).
	assign("back", false)
	for _, id := range ids {
		serving(id)
	}
	// Both serve: they answer again.
	servedBy("front", 1)
	servedBy("back", 1)
	close(stop)
	clients.Wait()

	// The watch sees each deployment's last change: front's last guests,
	// and back's stop.
	if _, err := dc.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "back"}); err != nil {
		t.Fatal(err)
	}
	front, err := dc.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "front"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		seenMu.Lock()
		last, frontLabels := seen["back"], lastLabels["front"]
		caughtUp := len(last) > 0 && last[len(last)-1] == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED &&
			frontLabels == front.Status.Spec.Config["labels"]
		seenMu.Unlock()
		if caughtUp {
			break
		}
		select {
		case <-event:
		case err := <-watched:
			t.Fatalf("watch ended: %v (back: %v)", err, last)
		case <-ctx.Done():
			t.Fatalf("the watch never saw back STOPPED (%v) or front with labels %s (%s)", last, front.Status.Spec.Config["labels"], frontLabels)
		}
	}
	stopWatch()
	if err := <-watched; status.Code(err) != codes.Canceled {
		t.Errorf("watch ended with %v, want CANCELED (the client's)", err)
	}
	for _, id := range ids {
		states := seen[id]
		for i := 1; i < len(states); i++ {
			prev, cur := states[i-1], states[i]
			ended := prev == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED || prev == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED
			if cur < prev && !(ended && cur == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_PENDING) {
				t.Errorf("%s: watch saw %v after %v (states %v)", id, cur, prev, states)
				break
			}
			if cur == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED {
				t.Errorf("%s failed: states %v", id, states)
			}
		}
		if len(states) == 0 {
			t.Errorf("%s: the watch saw nothing", id)
		}
	}
	if strings.Contains(logged.String(), "internal error") {
		t.Errorf("the server logged internal errors:\n%s", logged.String())
	}
	for _, p := range problems {
		t.Error(p)
	}
	t.Logf("answers %v, codes %v", answered, codesOf)
}
