package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// echoLoader loads "echo" models whose output is their input, sharing its
// bytes: what a guest that returns an input handle does.
type echoLoader struct{}

func (echoLoader) Format() string   { return "echo" }
func (echoLoader) Available() error { return nil }
func (echoLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return echoModel{}, nil
}

type echoModel struct{}

func (echoModel) Info() loaders.Info {
	return loaders.Info{Format: "echo", Platform: "echo",
		Inputs:  []loaders.TensorSpec{{Name: "x", DType: tensor.FP32, Shape: []int64{-1, -1}}},
		Outputs: []loaders.TensorSpec{{Name: "y", DType: tensor.FP32, Shape: []int64{-1, -1}}}}
}

func (echoModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	out := *in[0]
	out.Name = "y"
	return []*tensor.Tensor{&out}, nil
}

func (echoModel) Close() error { return nil }

// Responses that share memory with their request's tensors are encoded
// before the request's pooled buffer is reused: under concurrent traffic
// every client gets its own bytes back.
func TestResponsesDoNotShareRecycledBuffers(t *testing.T) {
	models := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(echoLoader{}), nil, nil, quietLog())
	t.Cleanup(func() { models.Close(context.Background()) })
	dir := t.TempDir()
	if _, err := models.Assign("echo", deploy.Spec{Name: "echo", Format: "echo",
		Model: artifact.Artifact{URI: "file://" + writeFile(t, dir, "m.echo", []byte("echo"))}}, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := models.WaitFor(ctx, "echo", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %v", st.Message, err)
	}
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	client := inference.NewGRPCInferenceServiceClient(conn)

	const workers, calls, n = 8, 40, 4096 // 16 KiB per tensor
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls {
				raw := make([]byte, 4*n)
				for i := range n {
					binary.LittleEndian.PutUint32(raw[4*i:], uint32(w<<24|c<<16|i))
				}
				resp, err := client.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "echo",
					Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, n}}},
					RawInputContents: [][]byte{raw}})
				if err != nil {
					errs <- err
					return
				}
				if len(resp.RawOutputContents) != 1 || !bytes.Equal(resp.RawOutputContents[0], raw) {
					errs <- fmt.Errorf("worker %d call %d: the response holds other bytes than its request", w, c)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
