package server

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// Concurrent clients on a batching deployment, some cancelling or timing
// out while queued, mid-batch or after: every answer that comes back must
// be the caller's own rows, doubled (a reused request buffer would show
// another caller's values).
func TestBatchedAnswersUnderCancellation(t *testing.T) {
	models := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(slowLoader{&slowModel{}}), nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
	})
	spec := deploy.Spec{Name: "b", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"},
		Batching: engine.Config{MaxBatchSize: 8192, MaxQueueDelay: 500 * time.Microsecond, Instances: 2, QueueCapacity: 256}}
	if _, err := models.Assign("b", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if st, err := models.WaitFor(wctx, "b", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %v", err, st.State)
	}
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	client := inference.NewGRPCInferenceServiceClient(conn)

	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, cancelled := 0, 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 60 {
				rows := 1 + rng.IntN(4)*300 // up to 2700 rows: 21 KB, several buffer classes
				base := float32(g*100000 + i*10)
				x := make([]float32, 2*rows)
				for j := range x {
					x[j] = base + float32(j%7)
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(3000))*time.Microsecond+50*time.Microsecond)
				if rng.IntN(3) == 0 {
					ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
				}
				resp, err := client.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "b",
					Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{int64(rows), 2}}},
					RawInputContents: [][]byte{f32raw(x...)}})
				cancel()
				if err != nil {
					if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Canceled {
						t.Errorf("unexpected error: %v", err)
					}
					mu.Lock()
					cancelled++
					mu.Unlock()
					continue
				}
				y := rawF32(resp.RawOutputContents[0])
				if len(y) != len(x) {
					t.Errorf("got %d values, want %d", len(y), len(x))
					continue
				}
				for j := range y {
					if y[j] != 2*x[j] {
						t.Errorf("client %d call %d: y[%d] = %v, want %v", g, i, j, y[j], 2*x[j])
						break
					}
				}
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d answered, %d cancelled", ok, cancelled)
}
