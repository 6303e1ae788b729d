package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// What clients are told of a deployment with guests is what its guests
// declare, not the native model behind them (ModelMetadata listed the
// model's FP32 tensor for a pipeline that takes image bytes), and requests
// are checked against it before any guest runs.
func TestGuestSignatures(t *testing.T) {
	n := newGuestNode(t)
	lin := n.file(t, "lin.onnx", onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1}))
	sigcfg := n.wasm(t, "host/deploy/testdata/sigcfg")
	spec := func(name, role, mode string) deploy.Spec {
		return deploy.Spec{Name: name, Format: "onnx", Model: lin, Config: map[string]string{"sig": mode},
			Guests: []deploy.Guest{{Name: "g", Artifact: sigcfg, Roles: []string{role}}}}
	}
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	describe := func(specs []loaders.TensorSpec) string {
		if specs == nil {
			return "nil"
		}
		return fmt.Sprint(specs)
	}

	for _, c := range []struct {
		name, role, mode string
		inputs, outputs  string
	}{
		{"pre", "preprocess", "x", "[{X FP32 [-1 3]}]", "[{Y FP32 [-1 2]}]"},   // outputs: the model's
		{"pre-none", "preprocess", "none", "nil", "[{Y FP32 [-1 2]}]"},         // inputs: unknown, not the model's
		{"post", "postprocess", "x", "[{X FP32 [-1 3]}]", "[{Y FP32 [-1 2]}]"}, // inputs: the model's
		{"post-none", "postprocess", "none", "[{X FP32 [-1 3]}]", "nil"},       // outputs: unknown
	} {
		t.Run(c.name, func(t *testing.T) {
			st := n.deploy(t, c.name, spec(c.name, c.role, c.mode))
			if !st.State.Serving() {
				t.Fatalf("deploy: %v %s", st.State, st.Message)
			}
			d, _ := n.m.Get(c.name)
			info := d.Info()
			if got := describe(info.Inputs) + " " + describe(info.Outputs); got != c.inputs+" "+c.outputs {
				t.Fatalf("info %s, want %s %s", got, c.inputs, c.outputs)
			}
			if st := d.Status(); fmt.Sprint(st.Info) != fmt.Sprint(info) {
				t.Fatalf("status info %+v, Info %+v", st.Info, info)
			}
			outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil)
			if err != nil || fmt.Sprint(tensor.View[float32](outs[0])) != "[9.5 11]" {
				t.Fatalf("infer: %v %v", outs, err)
			}
		})
	}

	// A declared input is a contract: another name, datatype or width is
	// the client's mistake, told before the guest runs.
	d, _ := n.m.Get("pre")
	for _, bad := range []*tensor.Tensor{
		tensor.FromSlice("Z", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1}),
		tensor.FromSlice("X", tensor.Int64, []int64{1, 3}, []int64{1, 1, 1}),
		tensor.FromSlice("X", tensor.FP32, []int64{1, 4}, []float32{1, 1, 1, 1}),
	} {
		_, err := d.Infer(context.Background(), []*tensor.Tensor{bad}, nil)
		if !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), "X") {
			t.Errorf("%s %v%v: %v, want ErrInvalidInput naming X", bad.Name, bad.DType, bad.Shape, err)
		}
	}
	// So is a declared output: asking for another is refused at once.
	d, _ = n.m.Get("post")
	if _, err := d.Infer(context.Background(), []*tensor.Tensor{x}, []string{"Z"}); !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), "Y") {
		t.Errorf("unknown output: %v", err)
	}
	if outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, []string{"Y"}); err != nil || len(outs) != 1 {
		t.Errorf("declared output: %v %v", outs, err)
	}

	// A signature the guest fails to give, or gives malformed, fails the
	// deployment with the reason.
	for mode, want := range map[string]string{"error": "no signature today", "twice": `"X" listed twice`} {
		st := n.deploy(t, "bad-"+mode, spec("bad-"+mode, "preprocess", mode))
		if st.State != deploy.Failed || !strings.Contains(st.Message, want) {
			t.Errorf("%s: %v %q, want Failed with %q", mode, st.State, st.Message, want)
		}
	}
}

// A FORMAT guest that declares a dynamic first dimension on every tensor
// is batched like a native model (it ran one request at a time): requests
// share executions, and each caller gets its own rows.
func TestFormatGuestBatches(t *testing.T) {
	n := newGuestNode(t)
	const in, hidden, out = 4, 8, 3
	weights := []*tensor.Tensor{
		tensor.New("fc1.weight", tensor.FP32, hidden, in), tensor.New("fc1.bias", tensor.FP32, hidden),
		tensor.New("fc2.weight", tensor.FP32, out, hidden), tensor.New("fc2.bias", tensor.FP32, out),
	}
	for k, w := range weights {
		v := tensor.View[float32](w)
		for i := range v {
			v[i] = float32((i*7+k*3)%11)/10 - 0.5
		}
	}
	var file bytes.Buffer
	if err := safetensors.Write(&file, weights, nil); err != nil {
		t.Fatal(err)
	}
	model := n.file(t, "mlp.safetensors", file.Bytes())
	fmtGuest := []deploy.Guest{{Name: "fmt", Artifact: n.wasm(t, "guests/examples/safetensors-mlp"), Roles: []string{"format"}}}
	one := n.deploy(t, "one", deploy.Spec{Name: "one", Format: deploy.FormatGuest, Model: model, Guests: fmtGuest})
	batched := n.deploy(t, "batched", deploy.Spec{Name: "batched", Format: deploy.FormatGuest, Model: model, Guests: fmtGuest,
		Batching: engine.Config{MaxBatchSize: 8, Instances: 1, MaxQueueDelay: 20 * time.Millisecond}})
	if !one.State.Serving() || !batched.State.Serving() {
		t.Fatalf("deploy: %v %s / %v %s", one.State, one.Message, batched.State, batched.Message)
	}
	d1, _ := n.m.Get("one")
	db, _ := n.m.Get("batched")
	const callers = 16
	xs := make([]*tensor.Tensor, callers)
	want := make([]string, callers)
	for i := range xs {
		xs[i] = tensor.FromSlice("x", tensor.FP32, []int64{1, in}, []float32{float32(i), 1, -float32(i) / 2, 0.25})
		outs, err := d1.Infer(context.Background(), []*tensor.Tensor{xs[i]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = fmt.Sprint(tensor.View[float32](outs[0]))
	}
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs, err := db.Infer(context.Background(), []*tensor.Tensor{xs[i]}, nil)
			if err != nil {
				errs <- err
				return
			}
			if got := fmt.Sprint(tensor.View[float32](outs[0])); got != want[i] || fmt.Sprint(outs[0].Shape) != "[1 3]" {
				errs <- fmt.Errorf("caller %d: %v %s, want [1 3] %s", i, outs[0].Shape, got, want[i])
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := db.Status().Stats; st.Executions >= callers {
		t.Fatalf("%d requests in %d executions (batch sizes %v): not batched", st.Requests, st.Executions, st.BatchSizes)
	}
}

// A postprocess guest whose outputs contradict its signature (another
// datatype, another fixed dimension) fails the request as the guest's bad
// output: clients build on the declaration they read in ModelMetadata.
func TestGuestOutputsMustMatchSignature(t *testing.T) {
	n := newGuestNode(t)
	lin := n.file(t, "lin.onnx", onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1}))
	sigcfg := n.wasm(t, "host/deploy/testdata/sigcfg")
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	for mode, want := range map[string]string{"liar": "INT64", "narrow": "[-1 3]"} {
		st := n.deploy(t, mode, deploy.Spec{Name: mode, Format: "onnx", Model: lin, Config: map[string]string{"sig": mode},
			Guests: []deploy.Guest{{Name: "g", Artifact: sigcfg, Roles: []string{"postprocess"}}}})
		if !st.State.Serving() {
			t.Fatalf("%s: deploy: %v %s", mode, st.State, st.Message)
		}
		d, _ := n.m.Get(mode)
		_, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil)
		if !errors.Is(err, guest.ErrBadOutput) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want the guest's bad output naming %s", mode, err, want)
		}
	}
}
