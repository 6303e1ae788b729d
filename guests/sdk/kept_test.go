package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// keptPool runs guests/sdk/testdata/kept in mode, on one instance.
func keptPool(t *testing.T, mode string) *guest.Pool { return keptPoolInfer(t, mode, nil) }

func keptPoolInfer(t *testing.T, mode string, infer cyxwiz.InferFunc) *guest.Pool {
	t.Helper()
	ctx := context.Background()
	rt, err := guest.NewRuntime(ctx, guest.Config{CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(ctx) })
	m, err := rt.Compile(ctx, guesttest.Build(t, "guests/sdk/testdata/kept"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(ctx) })
	p, err := rt.NewPool(ctx, m, guest.PoolConfig{Name: "test/kept", Config: map[string]string{"mode": mode}, Infer: infer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(ctx) })
	return p
}

func x(v ...float32) []*tensor.Tensor {
	return []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1, 2}, v)}
}

// A guest tensor kept from one call to the next (a constant, a stored
// input) is uploaded again in each call: the SDK kept the handle of its
// first upload, which the host frees when that call ends, so every later
// call failed with EBADF.
func TestKeptGuestTensorsOutliveTheirHandle(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want [][]float32 // per call, for x = {1, 2}, {3, 4}, {5, 6}
	}{
		{"const", [][]float32{{11, 22}, {13, 24}, {15, 26}}},
		{"input", [][]float32{{2, 4}, {4, 6}, {6, 8}}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			p := keptPool(t, tc.mode)
			for i, want := range tc.want {
				in := float32(2*i + 1)
				out, err := p.Preprocess(context.Background(), x(in, in+1))
				if err != nil {
					t.Fatalf("call %d: %v", i+1, err)
				}
				if len(out) != 1 || out[0].DType != tensor.FP32 || !slices.Equal(tensor.View[float32](out[0]), want) {
					t.Fatalf("call %d: got %v, want y = %v", i+1, out, want)
				}
			}
		})
	}
}

// A host tensor kept without Pin is gone after its call: returning it
// later is the guest's error (with a message saying so), not a bad output
// naming an unknown (or, once handle numbers wrap, another) host tensor.
func TestKeptHostTensorIsAGuestError(t *testing.T) {
	p := keptPool(t, "result")
	out, err := p.Preprocess(context.Background(), x(1, 2))
	if err != nil || len(out) != 1 || !slices.Equal(tensor.View[float32](out[0]), []float32{2, 3}) {
		t.Fatalf("first call: %v, %v", out, err)
	}
	_, err = p.Preprocess(context.Background(), x(1, 2))
	if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), "Pin") {
		t.Fatalf("second call: %v, want ErrGuest explaining the handle ended", err)
	}
}

// A nil output is the guest's error, not a nil dereference that traps and
// costs the instance.
func TestNilOutputIsAGuestError(t *testing.T) {
	p := keptPool(t, "nil")
	if _, err := p.Preprocess(context.Background(), x(1, 2)); !errors.Is(err, guest.ErrGuest) {
		t.Fatalf("err = %v, want ErrGuest", err)
	}
}

// Infer's inputs keep their own names when two are Named copies of one
// tensor: the SDK renamed their shared host tensor twice, so the model got
// both under the last name.
func TestInferNamedCopies(t *testing.T) {
	var got []string
	p := keptPoolInfer(t, "infer", func(_ context.Context, _ string, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
		got = got[:0]
		for _, x := range in {
			got = append(got, x.Name)
		}
		return in, nil
	})
	out, err := p.Preprocess(context.Background(), x(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("the model got inputs %q, want [a b]", got)
	}
	if len(out) != 2 || !slices.Equal(tensor.View[float32](out[1]), []float32{1, 2}) {
		t.Fatalf("outputs %v", out)
	}
}

// A model with more outputs than the SDK's first buffer (64): infer
// returned EINVAL after running it, so such a model could not be called
// from a guest. The SDK now retries with the room the host reports, and
// the host keeps the outputs for that retry: the model runs once.
func TestInferManyOutputs(t *testing.T) {
	const nOut = 100
	runs := 0
	p := keptPoolInfer(t, "infer", func(_ context.Context, _ string, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
		runs++
		out := make([]*tensor.Tensor, nOut)
		for i := range out {
			out[i] = tensor.FromSlice(fmt.Sprintf("o%d", i), tensor.Int64, []int64{1}, []int64{int64(i)})
		}
		return out, nil
	})
	out, err := p.Preprocess(context.Background(), x(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != nOut {
		t.Fatalf("%d outputs, want %d", len(out), nOut)
	}
	for i, o := range out {
		if o.Name != fmt.Sprintf("o%d", i) || tensor.View[int64](o)[0] != int64(i) {
			t.Fatalf("output %d: %s %v", i, o.Name, tensor.View[int64](o))
		}
	}
	if runs != 1 {
		t.Errorf("the model ran %d times, want 1", runs)
	}
}

// An output whose name or rank the tensor list cannot carry is the
// guest's error: the SDK's encoder cut a name of 70,000 bytes to 65,535
// (the output reached the response under a name the guest never gave),
// and a rank of 17 made the host throw the instance away as a bad output.
func TestOutputsTheListCannotCarry(t *testing.T) {
	for _, mode := range []string{"longname", "rank17"} {
		t.Run(mode, func(t *testing.T) {
			p := keptPool(t, mode)
			out, err := p.Preprocess(context.Background(), x(1, 2))
			if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), "at most 65535 and 16") {
				names := make([]int, len(out))
				for i, o := range out {
					names[i] = len(o.Name)
				}
				t.Fatalf("err = %v (outputs with names of %v bytes), want ErrGuest saying what fits", err, names)
			}
		})
	}
}

// An output named otherwise than in UTF-8 (ABI.md: names are UTF-8) is the
// guest's error: the host refused the list as a bad output and threw the
// instance away.
func TestOutputNameNotUTF8(t *testing.T) {
	for _, mode := range []string{"badname", "badnameinline"} {
		t.Run(mode, func(t *testing.T) {
			p := keptPool(t, mode)
			_, err := p.Preprocess(context.Background(), x(1, 2))
			if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), "UTF-8") {
				t.Fatalf("err = %v, want ErrGuest saying the name is not UTF-8", err)
			}
		})
	}
}

// A decision the host cannot follow (a run of more requests than are
// queued, a negative wait) is the guest's error: the host refused it as a
// bad output and threw the instance away, so a policy with that bug started
// a new instance for every decision.
func TestBatchPolicyDecisionOutOfRange(t *testing.T) {
	for _, mode := range []string{"runover", "negwait"} {
		t.Run(mode, func(t *testing.T) {
			p := keptPool(t, mode)
			q := guest.QueueState{Queued: 2, OldestWait: time.Millisecond, Rows: []int64{1, 3}, MaxBatch: 8}
			d, err := p.BatchPolicy(context.Background(), q)
			if !errors.Is(err, guest.ErrGuest) {
				t.Fatalf("BatchPolicy = %+v, %v; want ErrGuest", d, err)
			}
		})
	}
	d, err := keptPool(t, "all").BatchPolicy(context.Background(), guest.QueueState{Queued: 2, Rows: []int64{1, 3}, MaxBatch: 8})
	if err != nil || d.Run != 2 {
		t.Fatalf("BatchPolicy = %+v, %v; want Run 2", d, err)
	}
}

// An inline output whose elements do not match its dtype and shape is the
// guest's error: the SDK sent it as it was, the host refused the list as a
// bad output and threw the instance away.
func TestOutputsThatDoNotMatchTheirShape(t *testing.T) {
	for _, mode := range []string{"badsize", "badbytes", "baddtype"} {
		t.Run(mode, func(t *testing.T) {
			p := keptPool(t, mode)
			if _, err := p.Preprocess(context.Background(), x(1, 2)); !errors.Is(err, guest.ErrGuest) {
				t.Fatalf("err = %v, want ErrGuest", err)
			}
		})
	}
}

// An axis that int32 cannot hold is an error: the SDK passed int32(axis),
// so Softmax along 1<<32 - 1 ran along the last axis.
func TestSoftmaxAxisOutOfRange(t *testing.T) {
	p := keptPool(t, "axis")
	out, err := p.Preprocess(context.Background(), x(1, 2))
	if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), "out of range") {
		t.Fatalf("err = %v (outputs %v), want ErrGuest: out of range", err, out)
	}
}
