package deploy_test

import (
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
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A FORMAT guest that also takes the preprocess or postprocess role is
// asked for its signature after format_load, as ABI.md promises: asked
// before (as a preprocess guest), one that reads its tensors from the model
// failed the deployment ("no model loaded"), and one that answered kept
// what it said before the model loaded. What it declares is what clients
// send and get, not the tensors its preprocess role hands its model
// ("unknown input m" was refused between the two).
func TestFormatGuestInOtherRolesSignsAfterLoad(t *testing.T) {
	n := newGuestNode(t)
	g := n.wasm(t, "host/deploy/testdata/sigformat")
	model := n.file(t, "five.bin", []byte("12345")) // width 5
	for _, roles := range [][]string{
		{"format", "preprocess"},
		{"postprocess", "format"},
		{"preprocess", "format", "postprocess"},
	} {
		id := strings.Join(roles, "-")
		t.Run(id, func(t *testing.T) {
			st := n.deploy(t, id, deploy.Spec{Name: id, Format: deploy.FormatGuest, Model: model,
				Guests: []deploy.Guest{{Name: "g", Artifact: g, Roles: roles}}})
			if !st.State.Serving() {
				t.Fatalf("deploy: %v %s", st.State, st.Message)
			}
			d, _ := n.m.Get(id)
			if info := d.Info(); fmt.Sprint(info.Inputs, info.Outputs) != "[{x FP32 [-1 5]}] [{y FP32 [-1 5]}]" {
				t.Fatalf("described as %v -> %v", info.Inputs, info.Outputs)
			}
			x := tensor.FromSlice("x", tensor.FP32, []int64{1, 5}, []float32{1, 2, 3, 4, 5})
			outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, []string{"y"})
			if err != nil || len(outs) != 1 || fmt.Sprint(tensor.View[float32](outs[0])) != "[1 2 3 4 5]" {
				t.Fatalf("infer: %v %v", outs, err)
			}
		})
	}
}

// Status, read while a FORMAT deployment loads (a watcher, cyxwizctl
// status), does not race with the FORMAT guest's signature being taken
// (the race detector's check).
func TestStatusDuringFormatSignature(t *testing.T) {
	n := newGuestNode(t)
	g := n.wasm(t, "host/deploy/testdata/sigformat")
	model := n.file(t, "three.bin", []byte("123"))
	for i := range 3 {
		id := fmt.Sprintf("f%d", i)
		// format_load takes 200 ms: Status is read meanwhile.
		if _, err := n.m.Assign(id, deploy.Spec{Name: id, Format: deploy.FormatGuest, Model: model, Config: map[string]string{"load_ms": "200"},
			Guests: []deploy.Guest{{Name: "g", Artifact: g, Roles: []string{"format"}}}}, deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		d, err := n.m.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
					_ = d.Status()
					_ = d.Info()
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		st, err := n.m.WaitFor(ctx, id, deploy.Settled)
		cancel()
		close(done)
		wg.Wait()
		if err != nil || !st.State.Serving() {
			t.Fatalf("deploy: %v %v %s", err, st.State, st.Message)
		}
		if info := d.Info(); fmt.Sprint(info.Inputs) != "[{x FP32 [-1 3]}]" {
			t.Fatalf("inputs %v", info.Inputs)
		}
	}
}

// A signature that never returns, traps or takes all its memory fails the
// deployment within the call timeout, saying so; its instances are closed
// (TestMain checks for goroutines left behind).
func TestSignatureBombsFailTheDeployment(t *testing.T) {
	n := newGuestNode(t) // call timeout: 2 s
	lin := n.file(t, "lin.onnx", onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1}))
	sigcfg := n.wasm(t, "host/deploy/testdata/sigcfg")
	for mode, want := range map[string]string{"loop": "deadline", "trap": "signature trapped", "grow": "memory"} {
		t.Run(mode, func(t *testing.T) {
			start := time.Now()
			st := n.deploy(t, mode, deploy.Spec{Name: mode, Format: "onnx", Model: lin, Config: map[string]string{"sig": mode},
				Guests: []deploy.Guest{{Name: "g", Artifact: sigcfg, Roles: []string{"preprocess"}}}})
			if st.State != deploy.Failed || !strings.Contains(st.Message, "signature") || !strings.Contains(strings.ToLower(st.Message), want) {
				t.Fatalf("%v %q, want Failed naming the signature and %q", st.State, st.Message, want)
			}
			if took := time.Since(start); took > 20*time.Second {
				t.Fatalf("failed after %v", took)
			}
		})
	}
}

// A FORMAT guest is batched only when it declares its outputs, each with a
// dynamic first dimension: one that declares its inputs alone (or whose
// outputs are its postprocess role's, what clients get) said nothing of
// its outputs' rows, and was batched all the same; its outputs, one row
// for a batch, could not be split among the callers.
func TestFormatGuestUndeclaredOutputsNotBatched(t *testing.T) {
	n := newGuestNode(t)
	g := n.wasm(t, "host/deploy/testdata/sigformat")
	model := n.file(t, "two.bin", []byte("12"))
	for _, c := range []struct {
		id    string
		roles []string
		sig   string
	}{
		{"inputs-only", []string{"format"}, "inputs"},
		{"own-post", []string{"format", "postprocess"}, ""},
	} {
		t.Run(c.id, func(t *testing.T) {
			st := n.deploy(t, c.id, deploy.Spec{Name: c.id, Format: deploy.FormatGuest, Model: model,
				Config:   map[string]string{"sig": c.sig, "infer": "first"},
				Guests:   []deploy.Guest{{Name: "g", Artifact: g, Roles: c.roles}},
				Batching: engine.Config{MaxBatchSize: 8, Instances: 1, MaxQueueDelay: 20 * time.Millisecond}})
			if !st.State.Serving() {
				t.Fatalf("deploy: %v %s", st.State, st.Message)
			}
			d, _ := n.m.Get(c.id)
			const callers = 16
			var wg sync.WaitGroup
			errs := make(chan error, callers)
			for i := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					x := tensor.FromSlice("x", tensor.FP32, []int64{1, 2}, []float32{float32(i), -1})
					outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil)
					if err != nil {
						errs <- fmt.Errorf("caller %d: %w", i, err)
						return
					}
					if got := fmt.Sprint(outs[0].Shape, tensor.View[float32](outs[0])); got != fmt.Sprintf("[1 2] [%d -1]", i) {
						errs <- fmt.Errorf("caller %d: got %s", i, got)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// A guest that declares an output and does not return it has broken its
// declaration: the client that asked for the declared output is not told
// that it asked for an unknown one (INVALID_ARGUMENT), the guest's output
// is bad.
func TestDeclaredOutputMissingIsTheGuests(t *testing.T) {
	n := newGuestNode(t)
	g := n.wasm(t, "host/deploy/testdata/sigformat")
	model := n.file(t, "two.bin", []byte("12"))
	for _, roles := range [][]string{{"format"}, {"format", "postprocess"}} {
		id := strings.Join(roles, "-")
		t.Run(id, func(t *testing.T) {
			st := n.deploy(t, id, deploy.Spec{Name: id, Format: deploy.FormatGuest, Model: model,
				Config: map[string]string{"infer": "z"}, Guests: []deploy.Guest{{Name: "g", Artifact: g, Roles: roles}}})
			if !st.State.Serving() {
				t.Fatalf("deploy: %v %s", st.State, st.Message)
			}
			d, _ := n.m.Get(id)
			x := tensor.FromSlice("x", tensor.FP32, []int64{1, 2}, []float32{1, 2})
			_, err := d.Infer(context.Background(), []*tensor.Tensor{x}, []string{"y"})
			if !errors.Is(err, guest.ErrBadOutput) || errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), `"y"`) {
				t.Fatalf("declared y, returned z: %v, want ErrBadOutput naming y", err)
			}
			// Undeclared outputs are still the guest's to return, and an
			// output not declared is still the client's mistake.
			if outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil); err != nil || len(outs) != 1 || outs[0].Name != "z" {
				t.Fatalf("all outputs: %v %v", outs, err)
			}
			if _, err := d.Infer(context.Background(), []*tensor.Tensor{x}, []string{"w"}); !errors.Is(err, loaders.ErrInvalidInput) {
				t.Fatalf("undeclared output w: %v", err)
			}
		})
	}
}

// A live swap of the guests changes what clients are told and what their
// requests are checked against together: after the swap, the new guests'
// declaration; a swap that fails leaves the old one.
func TestSwapFollowsNewSignature(t *testing.T) {
	n := newGuestNode(t)
	lin := n.file(t, "lin.onnx", onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{0.5, -1}))
	sigcfg := n.wasm(t, "host/deploy/testdata/sigcfg")
	spec := func(pre, post string) deploy.Spec {
		s := deploy.Spec{Name: "m", Format: "onnx", Model: lin, Config: map[string]string{"sig": pre}}
		s.Guests = []deploy.Guest{{Name: "pre", Artifact: sigcfg, Roles: []string{"preprocess"}}}
		if post != "" {
			s.Config["sig"] = post
			s.Guests = append(s.Guests, deploy.Guest{Name: "post", Artifact: sigcfg, Roles: []string{"postprocess"}})
		}
		return s
	}
	if st := n.deploy(t, "m", spec("x", "")); !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	d, _ := n.m.Get("m")
	x := tensor.FromSlice("X", tensor.FP32, []int64{1, 3}, []float32{1, 1, 1})
	// Swapped to guests that declare nothing: the model's outputs, no inputs.
	if _, err := n.m.Assign("m", spec("none", "none"), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	if info := d.Info(); info.Inputs != nil || info.Outputs != nil {
		t.Fatalf("after the swap: %v -> %v", info.Inputs, info.Outputs)
	}
	if _, err := d.Infer(context.Background(), []*tensor.Tensor{x}, []string{"W"}); err == nil {
		t.Fatal("unknown output W served")
	}
	// A swap whose guest fails to declare is refused; the declaration stays.
	if _, err := n.m.Assign("m", spec("x", "error"), deploy.OwnerCentral); err == nil || !strings.Contains(err.Error(), "no signature today") {
		t.Fatalf("swap to a failing signature: %v", err)
	}
	if info := d.Info(); info.Inputs != nil || info.Outputs != nil {
		t.Fatalf("after the failed swap: %v -> %v", info.Inputs, info.Outputs)
	}
	if _, err := n.m.Assign("m", spec("x", ""), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	if info := d.Info(); fmt.Sprint(info.Inputs, info.Outputs) != "[{X FP32 [-1 3]}] [{Y FP32 [-1 2]}]" {
		t.Fatalf("swapped back: %v -> %v", info.Inputs, info.Outputs)
	}
	if outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil); err != nil || fmt.Sprint(tensor.View[float32](outs[0])) != "[9.5 11]" {
		t.Fatalf("infer: %v %v", outs, err)
	}
}
