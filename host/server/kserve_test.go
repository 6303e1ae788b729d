package server

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// slowModel is a real in-process model (y = 2x, x f32[-1,2]) whose runs can
// be held by the test, to fill queues and outlive deadlines.
type slowModel struct {
	gate  chan struct{} // each run takes one token; nil = no wait
	calls atomic.Int64
	rows  atomic.Int64
}

func (m *slowModel) Info() loaders.Info {
	spec := []loaders.TensorSpec{{Name: "x", DType: tensor.FP32, Shape: []int64{-1, 2}}}
	out := []loaders.TensorSpec{{Name: "y", DType: tensor.FP32, Shape: []int64{-1, 2}}}
	return loaders.Info{Format: "slow", Platform: "test", Inputs: spec, Outputs: out}
}

func (m *slowModel) Infer(ctx context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	m.calls.Add(1)
	m.rows.Add(in[0].Shape[0])
	if m.gate != nil {
		select {
		case <-m.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	x := tensor.View[float32](in[0])
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = 2 * v
	}
	return []*tensor.Tensor{tensor.FromSlice("y", tensor.FP32, in[0].Shape, y)}, nil
}

func (m *slowModel) Close() error { return nil }

// slowLoader hands out the test's slowModel for any path.
type slowLoader struct{ m *slowModel }

func (slowLoader) Format() string   { return "slow" }
func (slowLoader) Available() error { return nil }
func (l slowLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return l.m, nil
}

type testNode struct {
	client inference.GRPCInferenceServiceClient
	models *deploy.Manager
	dir    string
}

// newTestNode serves the given deployments over a real gRPC socket. ONNX
// models come from onnxtest, written to a temp dir.
func newTestNode(t *testing.T, slow *slowModel, specs ...deploy.Spec) *testNode {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	if err := onnxtest.WriteAll(dir); err != nil {
		t.Fatal(err)
	}
	if slow == nil {
		slow = &slowModel{}
	}
	reg := loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib}), slowLoader{slow})
	models := deploy.NewManager(deploy.Config{}, reg, nil, nil, quietLog())
	for _, s := range specs {
		if !filepath.IsAbs(s.Model.URI) {
			s.Model.URI = filepath.Join(dir, s.Model.URI)
		}
		s.Model.URI = "file://" + s.Model.URI
		if _, err := models.Assign(s.Name, s, deploy.OwnerOperator); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := models.WaitFor(ctx, s.Name, deploy.Settled) // failures stay visible as Failed deployments
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
	})
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	return &testNode{client: inference.NewGRPCInferenceServiceClient(conn), models: models, dir: dir}
}

func onnxSpec(name, file string, batch int) deploy.Spec {
	return deploy.Spec{Name: name, Format: "onnx", Model: artifact.Artifact{URI: file},
		Batching: engine.Config{MaxBatchSize: batch, Instances: 2, QueueCapacity: 64}}
}

func f32raw(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[i*4:], math.Float32bits(x))
	}
	return b
}

func rawF32(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[i*4:]))
	}
	return out
}

func TestModelMetadataAndReady(t *testing.T) {
	n := newTestNode(t, nil, onnxSpec("linear", "linear.onnx", 8))
	ctx := context.Background()
	md, err := n.client.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "linear"})
	if err != nil {
		t.Fatal(err)
	}
	if md.Platform != "onnxruntime_onnx" || len(md.Inputs) != 1 || md.Inputs[0].Name != "X" ||
		md.Inputs[0].Datatype != "FP32" || fmt.Sprint(md.Inputs[0].Shape) != "[-1 3]" ||
		md.Outputs[0].Name != "Y" || fmt.Sprint(md.Outputs[0].Shape) != "[-1 2]" || md.Versions[0] != "1" {
		t.Fatalf("metadata: %v", md)
	}
	r, err := n.client.ModelReady(ctx, &inference.ModelReadyRequest{Name: "linear"})
	if err != nil || !r.Ready {
		t.Fatalf("ModelReady: %v %v", r, err)
	}
	sr, err := n.client.ServerReady(ctx, &inference.ServerReadyRequest{})
	if err != nil || !sr.Ready {
		t.Fatalf("ServerReady: %v %v", sr, err)
	}
	for _, call := range []func() error{
		func() error {
			_, err := n.client.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "nope"})
			return err
		},
		func() error {
			_, err := n.client.ModelReady(ctx, &inference.ModelReadyRequest{Name: "nope"})
			return err
		},
		func() error {
			_, err := n.client.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "linear", Version: "7"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.NotFound {
			t.Errorf("want NotFound, got %v", err)
		}
	}
}

func TestInferRawAndTyped(t *testing.T) {
	n := newTestNode(t, nil, onnxSpec("linear", "linear.onnx", 8))
	ctx := context.Background()
	// W = [[1,2],[3,4],[5,6]], B = [0.5,-1]: X=[1,1,1] → [9.5, 11]; X=[1,0,2] → [11.5, 13]
	raw, err := n.client.ModelInfer(ctx, &inference.ModelInferRequest{
		ModelName: "linear", Id: "req-7",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{2, 3}}},
		RawInputContents: [][]byte{f32raw(1, 1, 1, 1, 0, 2)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if raw.Id != "req-7" || raw.ModelName != "linear" || len(raw.RawOutputContents) != 1 ||
		fmt.Sprint(rawF32(raw.RawOutputContents[0])) != "[9.5 11 11.5 13]" || fmt.Sprint(raw.Outputs[0].Shape) != "[2 2]" {
		t.Fatalf("raw response: %v", raw)
	}
	typed, err := n.client.ModelInfer(ctx, &inference.ModelInferRequest{
		ModelName: "linear",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3},
			Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 1, 1}}}},
		Outputs: []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "Y"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(typed.RawOutputContents) != 0 || fmt.Sprint(typed.Outputs[0].Contents.Fp32Contents) != "[9.5 11]" {
		t.Fatalf("typed response: %v", typed)
	}
}

// Every KServe datatype goes through the node and back unchanged, raw and
// (where the protocol has a field for it) typed.
func TestEveryDTypeRoundTrips(t *testing.T) {
	types := map[tensor.DType]onnxtest.ElemType{
		tensor.Bool: onnxtest.Bool, tensor.Uint8: onnxtest.Uint8, tensor.Uint16: onnxtest.Uint16,
		tensor.Uint32: onnxtest.Uint32, tensor.Uint64: onnxtest.Uint64, tensor.Int8: onnxtest.Int8,
		tensor.Int16: onnxtest.Int16, tensor.Int32: onnxtest.Int32, tensor.Int64: onnxtest.Int64,
		tensor.FP16: onnxtest.Float16, tensor.BF16: onnxtest.Bfloat16, tensor.FP32: onnxtest.Float,
		tensor.FP64: onnxtest.Double, tensor.Bytes: onnxtest.String,
	}
	var specs []deploy.Spec
	for dt, et := range types {
		specs = append(specs, onnxSpec("id-"+dt.String(), "identity_"+et.String()+".onnx", 8))
	}
	n := newTestNode(t, nil, specs...)
	for dt := range types {
		t.Run(dt.String(), func(t *testing.T) {
			in := sample(dt)
			name := "id-" + dt.String()
			md, err := n.client.ModelMetadata(context.Background(), &inference.ModelMetadataRequest{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			in.Name = md.Inputs[0].Name
			// raw
			resp, err := n.client.ModelInfer(context.Background(), &inference.ModelInferRequest{
				ModelName:        name,
				Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: in.Name, Datatype: dt.String(), Shape: in.Shape}},
				RawInputContents: [][]byte{toRaw(in)},
			})
			if err != nil {
				t.Fatalf("raw: %v", err)
			}
			if resp.Outputs[0].Datatype != dt.String() || string(resp.RawOutputContents[0]) != string(toRaw(in)) {
				t.Fatalf("raw round trip: got %v %x, want %x", resp.Outputs[0], resp.RawOutputContents[0], toRaw(in))
			}
			if dt == tensor.FP16 || dt == tensor.BF16 {
				return
			}
			// typed
			resp, err = n.client.ModelInfer(context.Background(), &inference.ModelInferRequest{
				ModelName: name,
				Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: in.Name, Datatype: dt.String(), Shape: in.Shape,
					Contents: toContents(in)}},
			})
			if err != nil {
				t.Fatalf("typed: %v", err)
			}
			out := &tensor.Tensor{Name: in.Name, DType: dt, Shape: resp.Outputs[0].Shape}
			if err := fromContents(out, resp.Outputs[0].Contents, tensor.NumElements(out.Shape)); err != nil {
				t.Fatal(err)
			}
			if string(toRaw(out)) != string(toRaw(in)) {
				t.Fatalf("typed round trip: got %v, want %v", out, in)
			}
		})
	}
}

// sample is a [2,4] tensor of dt with extreme and ordinary values.
func sample(dt tensor.DType) *tensor.Tensor {
	t := tensor.New("x", dt, 2, 4)
	if dt == tensor.Bytes {
		for i := range t.Strings {
			t.Strings[i] = []byte(strings.Repeat("ab", i) + "é")
		}
		return t
	}
	for i := range t.Data {
		t.Data[i] = byte(i*37 + 11)
	}
	if dt == tensor.Bool {
		for i := range t.Data {
			t.Data[i] &= 1
		}
	}
	if dt == tensor.FP32 || dt == tensor.FP64 || dt == tensor.FP16 || dt == tensor.BF16 {
		// keep floats finite and non-NaN so equality is meaningful
		for i := 0; i < len(t.Data); i += dt.Size() {
			t.Data[i+dt.Size()-1] = 0x3f
		}
	}
	return t
}

// Batched execution returns to each caller exactly what an unbatched run gives.
func TestBatchingSplitsBackToCallers(t *testing.T) {
	n := newTestNode(t, nil, onnxSpec("batched", "linear.onnx", 8), onnxSpec("single", "linear.onnx", 0))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows := int64(i%3 + 1)
			x := make([]float32, rows*3)
			for j := range x {
				x[j] = float32(i*10 + j)
			}
			req := func(model string) *inference.ModelInferRequest {
				return &inference.ModelInferRequest{ModelName: model,
					Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{rows, 3}}},
					RawInputContents: [][]byte{f32raw(x...)}}
			}
			a, err := n.client.ModelInfer(context.Background(), req("batched"))
			if err != nil {
				errs <- err
				return
			}
			b, err := n.client.ModelInfer(context.Background(), req("single"))
			if err != nil {
				errs <- err
				return
			}
			if string(a.RawOutputContents[0]) != string(b.RawOutputContents[0]) || fmt.Sprint(a.Outputs[0].Shape) != fmt.Sprint([]int64{rows, 2}) {
				errs <- fmt.Errorf("request %d: batched %v != single %v", i, rawF32(a.RawOutputContents[0]), rawF32(b.RawOutputContents[0]))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d, _ := n.models.Model("batched", "")
	st := d.Status().Stats
	if st.Requests != 48 {
		t.Errorf("stats: %d requests, want 48", st.Requests)
	}
}

func TestBadInputs(t *testing.T) {
	n := newTestNode(t, nil, onnxSpec("linear", "linear.onnx", 8), onnxSpec("multi", "multi_io.onnx", 8))
	x := func(shape []int64, raw []byte) *inference.ModelInferRequest {
		return &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: shape}},
			RawInputContents: [][]byte{raw}}
	}
	for _, tc := range []struct {
		name string
		req  *inference.ModelInferRequest
		code codes.Code
		msg  string
	}{
		{"unknown model", &inference.ModelInferRequest{ModelName: "nope"}, codes.NotFound, "nope"},
		{"no model name", &inference.ModelInferRequest{}, codes.InvalidArgument, "model_name"},
		{"unknown input", &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "Z", Datatype: "FP32", Shape: []int64{1, 3}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3)}}, codes.InvalidArgument, `unknown input "Z"`},
		{"wrong dtype", &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "INT32", Shape: []int64{1, 3}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3)}}, codes.InvalidArgument, "model wants FP32"},
		{"unknown dtype", &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FLOAT", Shape: []int64{1, 3}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3)}}, codes.InvalidArgument, "unknown datatype"},
		{"element count", x([]int64{2, 3}, f32raw(1, 2, 3)), codes.InvalidArgument, "needs 24 raw bytes"},
		{"fixed dim", x([]int64{1, 4}, f32raw(1, 2, 3, 4)), codes.InvalidArgument, "dimension 1 must be 3"},
		{"rank", x([]int64{3}, f32raw(1, 2, 3)), codes.InvalidArgument, "rank"},
		{"negative dim", x([]int64{-1, 3}, f32raw(1, 2, 3)), codes.InvalidArgument, "negative"},
		{"data in two contents fields", &inference.ModelInferRequest{ModelName: "linear",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3},
				Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3}, Fp64Contents: []float64{9}}}}},
			codes.InvalidArgument, "fp64_contents"},
		{"output requested twice", &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3)},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "Y"}, {Name: "Y"}}},
			codes.InvalidArgument, "requested twice"},
		// No data, but 2^40 rows: what models and guests would loop over.
		{"empty with huge dim", x([]int64{1 << 40, 0}, nil), codes.InvalidArgument, "spans more than"},
		// 2^62 FP32 elements: their byte count wraps to 0.
		{"bytes overflow", x([]int64{1 << 62}, nil), codes.InvalidArgument, "spans more than"},
		{"raw and typed", &inference.ModelInferRequest{ModelName: "linear",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3},
				Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3}}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3)}}, codes.InvalidArgument, "both raw_input_contents and contents"},
		{"typed wrong field", &inference.ModelInferRequest{ModelName: "linear",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3},
				Contents: &inference.InferTensorContents{IntContents: []int32{1, 2, 3}}}}}, codes.InvalidArgument, "takes contents.fp32_contents"},
		{"typed count", &inference.ModelInferRequest{ModelName: "linear",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3},
				Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2}}}}}, codes.InvalidArgument, "needs 3 elements"},
		{"raw count", &inference.ModelInferRequest{ModelName: "multi",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{
				{Name: "A", Datatype: "FP32", Shape: []int64{1, 4}}, {Name: "B", Datatype: "FP32", Shape: []int64{1, 4}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3, 4)}}, codes.InvalidArgument, "raw_input_contents has 1 entries for 2 inputs"},
		{"missing input", &inference.ModelInferRequest{ModelName: "multi",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "A", Datatype: "FP32", Shape: []int64{1, 4}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3, 4)}}, codes.InvalidArgument, "got 1 inputs, model wants 2"},
		{"unknown output", &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3}}},
			RawInputContents: [][]byte{f32raw(1, 2, 3)},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "nope"}}}, codes.InvalidArgument, `unknown output "nope"`},
		{"bytes truncated", &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "BYTES", Shape: []int64{1}}},
			RawInputContents: [][]byte{{9, 0, 0, 0, 'a'}}}, codes.InvalidArgument, "runs past the end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := n.client.ModelInfer(context.Background(), tc.req)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tc.code, tc.msg)
			}
		})
	}
	// The node still serves after all of that.
	if _, err := n.client.ModelInfer(context.Background(), x([]int64{1, 3}, f32raw(1, 2, 3))); err != nil {
		t.Fatal(err)
	}
}

func slowSpec(name string, queue int) deploy.Spec {
	return deploy.Spec{Name: name, Format: "slow", Model: artifact.Artifact{URI: "mem"},
		Batching: engine.Config{MaxBatchSize: 0, Instances: 1, QueueCapacity: queue}}
}

func slowReq(model string) *inference.ModelInferRequest {
	return &inference.ModelInferRequest{ModelName: model,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}}},
		RawInputContents: [][]byte{f32raw(1, 2)}}
}

func TestQueueFullDeadlineAndCancel(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	n := newTestNode(t, slow, slowSpec("slow", 2))
	ctx, cancelAll := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelAll()

	// One running (held at the gate), two queued: the queue is full.
	// The first is sent alone so that it is running before the others are
	// counted against the queue.
	results := make(chan error, 3)
	send := func() { _, err := n.client.ModelInfer(ctx, slowReq("slow")); results <- err }
	go send()
	waitFor(t, func() bool { return slow.calls.Load() == 1 })
	go send()
	go send()
	d, _ := n.models.Model("slow", "")
	waitFor(t, func() bool { st := d.Status().Stats; return slow.calls.Load() == 1 && st.Queued == 2 })
	_, err := n.client.ModelInfer(ctx, slowReq("slow"))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("queue full: got %v", err)
	}

	// A request whose deadline passes while queued gets DeadlineExceeded and
	// never runs; same for one the client cancels. Each is seen queued in
	// the engine before it gives up: a deadline that passed (or a cancel
	// sent) before the request reached the server would leave the engine
	// nothing to count, and the wait below would never end.
	slow2 := &slowModel{gate: make(chan struct{})}
	n2 := newTestNode(t, slow2, slowSpec("slow", 8))
	d2, _ := n2.models.Model("slow", "")
	go n2.client.ModelInfer(ctx, slowReq("slow")) // holds the only instance
	waitFor(t, func() bool { return slow2.calls.Load() == 1 })
	// The deadline is generous enough for the request to reach the queue
	// on a loaded machine; the test sees it there before it passes.
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	dres := make(chan error, 1)
	go func() { _, err := n2.client.ModelInfer(dctx, slowReq("slow")); dres <- err }()
	waitFor(t, func() bool { st := d2.Status().Stats; return st.Queued == 1 || st.Cancelled == 1 })
	if err := <-dres; status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline: got %v", err)
	}
	waitFor(t, func() bool { st := d2.Status().Stats; return st.Cancelled == 1 && st.Queued == 0 })
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	cres := make(chan error, 1)
	go func() { _, err := n2.client.ModelInfer(cctx, slowReq("slow")); cres <- err }()
	waitFor(t, func() bool { return d2.Status().Stats.Queued == 1 })
	ccancel()
	if err := <-cres; status.Code(err) != codes.Canceled {
		t.Fatalf("cancel: got %v", err)
	}
	// Cancellation reaches the server asynchronously: wait until the engine
	// has seen both give-ups before letting the instance go.
	waitFor(t, func() bool { return d2.Status().Stats.Cancelled >= 2 })
	close(slow2.gate) // release everything
	close(slow.gate)
	for range 3 {
		if err := <-results; err != nil {
			t.Errorf("queued request: %v", err)
		}
	}
	// Let any (wrongly) surviving request reach the model, then count.
	if _, err := n2.client.ModelInfer(ctx, slowReq("slow")); err != nil {
		t.Fatal(err)
	}
	if c := slow2.calls.Load(); c != 2 {
		t.Fatalf("model ran %d times, want 2: an expired or cancelled request ran", c)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// A corrupt model fails its own deployment only.
func TestCorruptModelFailsOnlyItself(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.onnx")
	os.WriteFile(garbage, []byte("this is not a protobuf at all \x00\xff\xfe"), 0o644)
	trunc := filepath.Join(dir, "trunc.onnx")
	lin := onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1})
	os.WriteFile(trunc, lin[:len(lin)/2], 0o644)
	n := newTestNode(t, nil,
		onnxSpec("garbage", garbage, 8), onnxSpec("trunc", trunc, 8),
		onnxSpec("missing", filepath.Join(dir, "nope.onnx"), 8), onnxSpec("linear", "linear.onnx", 8))
	for _, name := range []string{"garbage", "trunc", "missing"} {
		d, err := n.models.Model(name, "")
		if d == nil || d.State() != deploy.Failed || err == nil {
			t.Fatalf("%s: %v %v", name, d, err)
		}
		if msg := d.Status().Message; !strings.Contains(msg, ".onnx") {
			t.Errorf("%s: failure message does not name the file: %q", name, msg)
		}
		r, err := n.client.ModelReady(context.Background(), &inference.ModelReadyRequest{Name: name})
		if err != nil || r.Ready {
			t.Errorf("%s: ModelReady = %v, %v", name, r, err)
		}
		// Not UNAVAILABLE, which tells a client to retry: a failed
		// deployment serves only once assigned again.
		_, err = n.client.ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: name})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), name+" is Failed: ") {
			t.Errorf("%s: infer on a failed model: %v, want FailedPrecondition saying why", name, err)
		}
		_, err = n.client.ModelMetadata(context.Background(), &inference.ModelMetadataRequest{Name: name})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: metadata of a failed model: %v, want FailedPrecondition", name, err)
		}
	}
	resp, err := n.client.ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "linear",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3}}},
		RawInputContents: [][]byte{f32raw(1, 1, 1)}})
	if err != nil || fmt.Sprint(rawF32(resp.RawOutputContents[0])) != "[9.5 11]" {
		t.Fatalf("healthy model: %v %v", resp, err)
	}
}

// A request already running (on its handler's goroutine: the instance was
// idle) ends with its client's deadline or cancellation, and the node goes
// on serving.
func TestRunningRequestEndsWithItsClient(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	n := newTestNode(t, slow, slowSpec("slow", 8))
	ctx, cancelAll := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelAll()

	// The deadline leaves the request time to reach the model on a loaded
	// machine (one that passed first would never reach the server, and the
	// counts below would be short); the model sees it before it passes.
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := n.client.ModelInfer(dctx, slowReq("slow")); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline while running: got %v", err)
	}
	if c := slow.calls.Load(); c != 1 {
		t.Fatalf("the request with a deadline reached the model %d times before it passed, want 1", c)
	}
	cctx, ccancel := context.WithCancel(ctx)
	go func() { // once the request runs, its client goes away
		for slow.calls.Load() < 2 && cctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		ccancel()
	}()
	if _, err := n.client.ModelInfer(cctx, slowReq("slow")); status.Code(err) != codes.Canceled {
		t.Fatalf("cancel while running: got %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("running requests took %v to end", el)
	}
	d, _ := n.models.Model("slow", "")
	waitFor(t, func() bool { return d.Status().Stats.Cancelled >= 2 })
	close(slow.gate)
	if _, err := n.client.ModelInfer(ctx, slowReq("slow")); err != nil {
		t.Fatalf("after two give-ups: %v", err)
	}
	if st := d.Status().Stats; st.Requests != 3 || st.Cancelled != 2 || st.Failures != 0 {
		t.Fatalf("stats %+v", st)
	}
}
