package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// guestNode is a manager with ONNX Runtime and a guest runtime, deploying
// file:// artifacts from a temp dir.
type guestNode struct {
	m     *deploy.Manager
	dir   string
	cache *artifact.Cache
}

func newGuestNode(t *testing.T) *guestNode {
	t.Helper()
	return newGuestNodeTimeout(t, 2*time.Second)
}

// newGuestNodeTimeout is newGuestNode with guests' calls bounded by
// callTimeout (a test about memory, not time, must not fail on a busy
// machine).
func newGuestNodeTimeout(t *testing.T, callTimeout time.Duration) *guestNode {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := guest.NewRuntime(context.Background(), guest.Config{
		CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache"), MemoryLimitPages: 512, CallTimeout: callTimeout,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	// A real artifact cache, as the daemon has: swaps fetch through it.
	dir := t.TempDir()
	cache, err := artifact.New(filepath.Join(dir, "artifacts"), 0, log)
	if err != nil {
		t.Fatal(err)
	}
	m := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 2},
		loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib})), cache, nil, log)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
		rt.Close(ctx)
		cache.Close()
	})
	return &guestNode{m: m, dir: dir, cache: cache}
}

// file writes b under the node's dir and returns its file:// artifact.
func (n *guestNode) file(t *testing.T, name string, b []byte) artifact.Artifact {
	t.Helper()
	p := filepath.Join(n.dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return artifact.Artifact{URI: "file://" + p}
}

func (n *guestNode) wasm(t *testing.T, dir string) artifact.Artifact {
	return n.file(t, filepath.Base(dir)+".wasm", guesttest.Build(t, dir))
}

// deploy assigns spec under id and waits until it settles.
func (n *guestNode) deploy(t *testing.T, id string, spec deploy.Spec) deploy.Status {
	t.Helper()
	if _, err := n.m.Assign(id, spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := n.m.WaitFor(ctx, id, deploy.Settled)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func pngBytes(t *testing.T, w, h int, dark func(x, y int) bool) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := uint8(240)
			if dark(x, y) {
				c = 10
			}
			img.Set(x, y, color.RGBA{c, c, c, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func strTensor(name string, vals ...[]byte) *tensor.Tensor {
	return &tensor.Tensor{Name: name, DType: tensor.Bytes, Shape: []int64{int64(len(vals))}, Strings: vals}
}

func ocrSpec(n *guestNode, t *testing.T, labels string) deploy.Spec {
	model, err := os.ReadFile(loadertest.NativeLib(t, "models/ppocr-cls.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	return deploy.Spec{Name: "ocr", Format: "onnx", Model: n.file(t, "cls.onnx", model),
		Batching: engine.Config{MaxBatchSize: 8, Instances: 2},
		Config:   map[string]string{"labels": labels},
		Guests: []deploy.Guest{
			{Name: "pre", Artifact: n.wasm(t, "guests/examples/ppocr-pre"), Roles: []string{"preprocess"}},
			{Name: "post", Artifact: n.wasm(t, "guests/examples/cls-post"), Roles: []string{"postprocess"}},
		}}
}

// The PP-OCR pipeline through a deployment: image bytes in, label and score
// out; then the postprocess guest's config is swapped on the live
// deployment without reloading the model.
// ONNX models let the engine reuse batch buffers; guest format models (which
// may pin their inputs) do not.
var _ engine.InputReleaser = (*onnx.Model)(nil)

func TestGuestPipelineAndLiveSwap(t *testing.T) {
	n := newGuestNode(t)
	st := n.deploy(t, "ocr", ocrSpec(n, t, "0,180"))
	if !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	d, _ := n.m.Get("ocr")
	img := pngBytes(t, 320, 80, func(x, y int) bool { return (x/8)%3 == 0 && y > 20 && y < 60 })
	infer := func() (string, float32) {
		t.Helper()
		outs, err := d.Infer(context.Background(), []*tensor.Tensor{strTensor("image", img)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(outs) != 2 || outs[0].Name != "label" || outs[1].Name != "score" {
			t.Fatalf("outputs %v", outs)
		}
		return string(outs[0].Strings[0]), tensor.View[float32](outs[1])[0]
	}
	label, score := infer()
	if label != "0" && label != "180" || score < 0.5 || score > 1 {
		t.Fatalf("label %q score %v", label, score)
	}

	// The deployment's entry point is the guests' contract, which they
	// declare: clients see image bytes in, labels and scores out (not the
	// model's FP32 tensors), and a raw model tensor is refused before the
	// guest runs.
	if info := d.Info(); fmt.Sprint(info.Inputs, info.Outputs) != "[{image BYTES [-1]}] [{label BYTES [-1 -1]} {score FP32 [-1 -1]}]" {
		t.Fatalf("pipeline described as %v -> %v", info.Inputs, info.Outputs)
	}
	raw := tensor.New("x", tensor.FP32, 1, 3, 48, 192)
	if _, err := d.Infer(context.Background(), []*tensor.Tensor{raw}, nil); !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), "image BYTES") {
		t.Fatalf("raw FP32 tensor past the preprocess guest: %v", err)
	}

	// Swap: new labels, same model (no reload: the load count and stats carry on).
	before := d.Status()
	next := ocrSpec(n, t, "upright,flipped")
	if _, err := n.m.Assign("ocr", next, deploy.OwnerCentral); err != nil {
		t.Fatalf("swap: %v", err)
	}
	label2, score2 := infer()
	want := map[string]string{"0": "upright", "180": "flipped"}[label]
	if label2 != want || score2 != score {
		t.Fatalf("after swap: %q %v, want %q %v", label2, score2, want, score)
	}
	after := d.Status()
	if after.Info.MemoryBytes != before.Info.MemoryBytes || after.Stats.Requests <= before.Stats.Requests || !after.State.Serving() {
		t.Fatalf("swap reloaded or reset the model: before %+v after %+v", before.Stats, after.Stats)
	}
	// Changing the model itself is not a swap.
	next.Batching.MaxBatchSize = 4
	if _, err := n.m.Assign("ocr", next, deploy.OwnerCentral); !errors.Is(err, deploy.ErrExists) {
		t.Fatalf("model change under the same id: %v", err)
	}
}

// A hostile preprocess guest fails its own requests with the right error,
// and a healthy deployment next to it keeps serving.
func TestHostileGuestInDeployment(t *testing.T) {
	n := newGuestNode(t)
	lin := onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1})
	good := n.deploy(t, "good", deploy.Spec{Name: "good", Format: "onnx", Model: n.file(t, "good.onnx", lin)})
	bad := n.deploy(t, "bad", deploy.Spec{Name: "bad", Format: "onnx", Model: n.file(t, "bad.onnx", lin),
		Guests: []deploy.Guest{{Name: "evil", Artifact: n.wasm(t, "host/guest/testdata/hostile"), Roles: []string{"preprocess"},
			CallTimeout: 10 * time.Second}}})
	if !good.State.Serving() || !bad.State.Serving() {
		t.Fatalf("deploy: %v %s / %v %s", good.State, good.Message, bad.State, bad.Message)
	}
	gd, _ := n.m.Get("good")
	bd, _ := n.m.Get("bad")
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	for _, tc := range []struct {
		mode string
		want error
	}{
		{"loop", guest.ErrDeadline}, // the caller's deadline below ends it
		{"bomb", guest.ErrMemory},
		{"panic", guest.ErrTrap},
		{"fail", guest.ErrGuest},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if tc.mode == "loop" {
				ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
			}
			defer cancel()
			_, err := bd.Infer(ctx, []*tensor.Tensor{strTensor("mode", []byte(tc.mode))}, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			outs, err := gd.Infer(context.Background(), []*tensor.Tensor{x}, nil)
			if err != nil || fmt.Sprint(tensor.View[float32](outs[0])) != "[9.5 11]" {
				t.Fatalf("healthy deployment after %s: %v %v", tc.mode, outs, err)
			}
		})
	}
	if st := bd.Status(); !st.State.Serving() {
		t.Fatalf("hostile requests took the deployment down: %v", st.State)
	}
}

// A model in a custom format, loaded and run entirely by a FORMAT guest.
func TestFormatGuestDeployment(t *testing.T) {
	n := newGuestNode(t)
	const in, hidden, out = 4, 8, 3
	w1, b1 := make([]float32, hidden*in), make([]float32, hidden)
	w2, b2 := make([]float32, out*hidden), make([]float32, out)
	for i := range w1 {
		w1[i] = float32(math.Sin(float64(i))) / 2
	}
	for i := range w2 {
		w2[i] = float32(math.Cos(float64(i))) / 3
	}
	for i := range b1 {
		b1[i] = float32(i%3) * 0.1
	}
	b2[1] = -0.25
	var file bytes.Buffer
	if err := safetensors.Write(&file, []*tensor.Tensor{
		tensor.FromSlice("fc1.weight", tensor.FP32, []int64{hidden, in}, w1),
		tensor.FromSlice("fc1.bias", tensor.FP32, []int64{hidden}, b1),
		tensor.FromSlice("fc2.weight", tensor.FP32, []int64{out, hidden}, w2),
		tensor.FromSlice("fc2.bias", tensor.FP32, []int64{out}, b2),
	}, nil); err != nil {
		t.Fatal(err)
	}
	st := n.deploy(t, "mlp", deploy.Spec{Name: "mlp", Format: deploy.FormatGuest, Model: n.file(t, "mlp.safetensors", file.Bytes()),
		Guests: []deploy.Guest{{Name: "fmt", Artifact: n.wasm(t, "guests/examples/safetensors-mlp"), Roles: []string{"format"}}}})
	if !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	d, _ := n.m.Get("mlp")
	// The guest declares the loaded model's tensors, and requests are
	// checked against them before the guest runs.
	if info := d.Info(); fmt.Sprint(info.Inputs, info.Outputs) != "[{x FP32 [-1 4]}] [{y FP32 [-1 3]}]" {
		t.Fatalf("format guest described as %v -> %v", info.Inputs, info.Outputs)
	}
	wide := tensor.FromSlice("x", tensor.FP32, []int64{1, in + 1}, make([]float32, in+1))
	if _, err := d.Infer(context.Background(), []*tensor.Tensor{wide}, nil); !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), "[-1 4]") {
		t.Fatalf("x of width %d: %v", in+1, err)
	}
	x := []float32{0.5, -1, 2, 0.25, 1, 1, 1, 1}
	outs, err := d.Infer(context.Background(), []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{2, in}, x)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := tensor.View[float32](outs[0])
	for r := range 2 {
		h := make([]float32, hidden)
		for j := range hidden {
			s := b1[j]
			for k := range in {
				s += x[r*in+k] * w1[j*in+k]
			}
			h[j] = max(s, 0)
		}
		for o := range out {
			s := b2[o]
			for j := range hidden {
				s += h[j] * w2[o*hidden+j]
			}
			if math.Abs(float64(s-got[r*out+o])) > 1e-5 {
				t.Fatalf("row %d output %d: guest %v, native %v", r, o, got[r*out+o], s)
			}
		}
	}

	// A corrupt model file fails the deployment with the guest's reason.
	st = n.deploy(t, "mlp-bad", deploy.Spec{Name: "mlp-bad", Format: deploy.FormatGuest, Model: n.file(t, "bad.safetensors", []byte("\xff\xff\xff\xff\xff\xff\xff\x7fjunk")),
		Guests: []deploy.Guest{{Name: "fmt", Artifact: n.wasm(t, "guests/examples/safetensors-mlp"), Roles: []string{"format"}}}})
	if st.State != deploy.Failed {
		t.Fatalf("corrupt safetensors: %v %s", st.State, st.Message)
	}
}

// A batch-policy guest decides when batches run; results stay correct.
func TestBatchPolicyGuestDeployment(t *testing.T) {
	n := newGuestNode(t)
	lin := onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1})
	st := n.deploy(t, "lp", deploy.Spec{Name: "lp", Format: "onnx", Model: n.file(t, "lp.onnx", lin),
		// The queue delay bounds each policy call too: a generous one, so
		// that a loaded machine does not cut the guest off (counted as a
		// policy error); the policy itself waits 2 ms.
		Batching: engine.Config{MaxBatchSize: 8, Instances: 1, MaxQueueDelay: 500 * time.Millisecond},
		Config:   map[string]string{"max_wait_us": "2000"},
		Guests:   []deploy.Guest{{Name: "policy", Artifact: n.wasm(t, "guests/examples/latency-batch"), Roles: []string{"batch_policy"}}}})
	if !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	d, _ := n.m.Get("lp")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := float32(i)
			outs, err := d.Infer(context.Background(), []*tensor.Tensor{tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{v, 0, 0})}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			if y := tensor.View[float32](outs[0]); y[0] != v+0.5 || y[1] != 2*v-1 {
				t.Errorf("request %d: %v", i, y)
			}
		}()
	}
	wg.Wait()
	stats := d.Status().Stats
	if stats.PolicyErrors != 0 || stats.Executions >= 16 {
		t.Fatalf("policy errors %d, %d executions for 16 requests (no batching?) %v", stats.PolicyErrors, stats.Executions, stats.BatchSizes)
	}
}

// A guest's memory_limit_pages holds it below the node's limit; one over
// the node's limit is refused at Assign.
func TestGuestMemoryLimitInDeployment(t *testing.T) {
	n := newGuestNode(t) // node limit: 512 pages
	lin := onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1})
	spec := func(name string, pages uint32) deploy.Spec {
		return deploy.Spec{Name: name, Format: "onnx", Model: n.file(t, name+".onnx", lin),
			Guests: []deploy.Guest{{Name: "g", Artifact: n.wasm(t, "host/guest/testdata/hostile"), Roles: []string{"preprocess"},
				MemoryLimitPages: pages, CallTimeout: 10 * time.Second}}}
	}
	small := n.deploy(t, "small", spec("small", 160))
	roomy := n.deploy(t, "roomy", spec("roomy", 0))
	if !small.State.Serving() || !roomy.State.Serving() {
		t.Fatalf("deploy: %v %s / %v %s", small.State, small.Message, roomy.State, roomy.Message)
	}
	sd, _ := n.m.Get("small")
	rd, _ := n.m.Get("roomy")
	in := []*tensor.Tensor{strTensor("mode", []byte("grow"))}
	if _, err := sd.Infer(context.Background(), in, nil); !errors.Is(err, guest.ErrMemory) {
		t.Fatalf("16 MiB in a 10 MiB guest: err = %v, want ErrMemory", err)
	}
	// The guest returns its input; the model then refuses it: what matters
	// is that the guest itself ran to the end.
	if _, err := rd.Infer(context.Background(), in, nil); errors.Is(err, guest.ErrMemory) {
		t.Fatalf("16 MiB under the node's 32 MiB: %v", err)
	}
	_, err := n.m.Assign("big", spec("big", 1024), deploy.OwnerCentral)
	if !errors.Is(err, deploy.ErrInvalidSpec) || !strings.Contains(err.Error(), "memory_limit_pages is 1024") {
		t.Fatalf("over the node's limit: err = %v, want ErrInvalidSpec", err)
	}
	// A node that does not allow precise clocks refuses a spec that grants them.
	precise := spec("precise", 0)
	precise.Guests[0].PreciseClock = true
	_, err = n.m.Assign("precise", precise, deploy.OwnerCentral)
	if !errors.Is(err, deploy.ErrInvalidSpec) || !strings.Contains(err.Error(), "allow_precise_clock") {
		t.Fatalf("precise clock on a node that forbids it: err = %v, want ErrInvalidSpec", err)
	}
}
