package deploy_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// countedGuestNode is a guestNode whose ONNX models are counted (and can be
// held at a gate, countingLoader.hold).
func countedGuestNode(t *testing.T) (*guestNode, *countingLoader) {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := guest.NewRuntime(context.Background(), guest.Config{
		CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache"), MemoryLimitPages: 512, CallTimeout: time.Minute,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	l := &countingLoader{Loader: onnx.New(onnx.Config{LibraryPath: lib})}
	m := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 1, Load: loaders.Options{IntraOpThreads: 1, InterOpThreads: 1}},
		loaders.NewRegistry(l), nil, nil, log)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
		rt.Close(ctx)
	})
	return &guestNode{m: m, dir: t.TempDir()}, l
}

// A request still in its preprocess guest when its deployment is stopped
// is in flight: the stop's drain lets it finish. It failed with "a is
// Stopping" (NotReady) when its guest handed it to the model, though the
// drain had time left and the model was still loaded.
func TestStopDrainFinishesRequestInGuest(t *testing.T) {
	n, l := countedGuestNode(t)
	b := n.deploy(t, "b", linearSpec("b", n.file(t, "b.onnx", linear(1))))
	if b.State != deploy.Ready {
		t.Fatalf("b: %v (%s)", b.State, b.Message)
	}
	// a's preprocess guest first runs model b, which is held at the gate.
	if a := n.deploy(t, "a", callSpec(n, t, "a", "b", "b")); a.State != deploy.Ready {
		t.Fatalf("a: %v (%s)", a.State, a.Message)
	}
	entered, release := l.hold()
	defer release()
	result := make(chan error, 1)
	var y []float32
	go func() {
		outs, err := inferX(context.Background(), n.m, "a")
		if err == nil {
			y = slices.Clone(tensor.View[float32](outs[0]))
		}
		result <- err
	}()
	receive(t, entered, "a's preprocess guest to run model b")

	w := n.m.Watch([]string{"a"}, false)
	defer w.Close()
	stopped := make(chan error, 1)
	go func() {
		_, err := n.m.StopDrain(context.Background(), "a", time.Minute)
		stopped <- err
	}()
	for e := range w.C {
		if e.Status.State == deploy.Stopping {
			break
		}
	}
	release() // a's request leaves its guest for a's model, the drain still on
	if err := <-result; err != nil {
		t.Errorf("request in flight when the stop began: %v, want it served", err)
	} else if !slices.Equal(y, wantLinear(0)) {
		t.Errorf("Y = %v, want %v", y, wantLinear(0))
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if d, err := n.m.Get("a"); err != nil || d.State() != deploy.Stopped {
		t.Fatalf("a after the stop: %v", err)
	}
}
