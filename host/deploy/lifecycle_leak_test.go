package deploy_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// digestFile writes b under dir and returns it as a file:// artifact with
// its digest, so that it goes through the cache and is pinned.
func digestFile(t *testing.T, dir, name string, b []byte) artifact.Artifact {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return artifact.Artifact{URI: "file://" + p, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

// The Central Server assigns and stops deployments all day: a node that
// has assigned, served and stopped the same deployments (PP-OCR with and
// without its guests, and one whose model fails to load after its guests
// started) N times holds no more after 2N times: no goroutine, file, OS
// thread or native memory is left behind by a run.
func TestAssignStopCyclesHoldSteady(t *testing.T) {
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	model, err := os.ReadFile(loadertest.NativeLib(t, "models/ppocr-cls.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	rt, err := guest.NewRuntime(context.Background(), guest.Config{
		CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache"), MemoryLimitPages: 512, CallTimeout: 5 * time.Second,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cache, err := artifact.New(filepath.Join(dir, "artifacts"), 0, log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "deployments.db"))
	if err != nil {
		t.Fatal(err)
	}
	m := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 2, Load: loaders.Options{IntraOpThreads: 2}},
		loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib})), cache, st, log)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
		rt.Close(ctx)
		cache.Close()
		st.Close()
	})

	guests := []deploy.Guest{
		{Name: "pre", Artifact: digestFile(t, dir, "pre.wasm", guesttest.Build(t, "guests/examples/ppocr-pre")), Roles: []string{"preprocess"}, Instances: 1},
		{Name: "post", Artifact: digestFile(t, dir, "post.wasm", guesttest.Build(t, "guests/examples/cls-post")), Roles: []string{"postprocess"}, Instances: 1},
	}
	ocr := deploy.Spec{Name: "ocr", Format: "onnx", Model: digestFile(t, dir, "cls.onnx", model),
		Batching: engine.Config{MaxBatchSize: 4, Instances: 2}, Config: map[string]string{"labels": "0,180"}, Guests: guests}
	raw := deploy.Spec{Name: "cls", Format: "onnx", Model: ocr.Model, Batching: engine.Config{MaxBatchSize: 4, Instances: 2}}
	broken := deploy.Spec{Name: "broken", Format: "onnx", Model: digestFile(t, dir, "broken.onnx", model[:len(model)/2]),
		Config: ocr.Config, Guests: guests}
	img := pngBytes(t, 320, 80, func(x, y int) bool { return (x/8)%3 == 0 && y > 20 && y < 60 })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up := func(id string, spec deploy.Spec, want deploy.State) *deploy.Deployment {
		t.Helper()
		if _, err := m.Assign(id, spec, deploy.OwnerCentral); err != nil {
			t.Fatalf("assign %s: %v", id, err)
		}
		s, err := m.WaitFor(ctx, id, deploy.Settled)
		if err != nil {
			t.Fatal(err)
		}
		if s.State != want && !(want == deploy.Ready && s.State.Serving()) {
			t.Fatalf("%s: %v (%s), want %v", id, s.State, s.Message, want)
		}
		d, err := m.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	stop := func(id string) {
		t.Helper()
		if s, err := m.Stop(ctx, id); err != nil || s.State != deploy.Stopped {
			t.Fatalf("stop %s: %v, %v", id, s.State, err)
		}
	}
	cycle := func() {
		t.Helper()
		d := up("ocr", ocr, deploy.Ready)
		if _, err := d.Infer(ctx, []*tensor.Tensor{strTensor("image", img)}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Infer(ctx, []*tensor.Tensor{strTensor("image", []byte("not a PNG"))}, nil); !errors.Is(err, guest.ErrGuest) {
			t.Fatalf("bad image: %v", err)
		}
		stop("ocr")

		d = up("cls", raw, deploy.Ready)
		x := tensor.New("x", tensor.FP32, 2, 3, 48, 192)
		if _, err := d.Infer(ctx, []*tensor.Tensor{x}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Infer(ctx, []*tensor.Tensor{tensor.New("x", tensor.FP32, 1, 3, 0, 5)}, nil); !errors.Is(err, loaders.ErrInvalidInput) {
			t.Fatalf("shape ORT refuses: %v", err)
		}
		stop("cls")

		up("broken", broken, deploy.Failed)
		stop("broken")
	}

	const n = 6
	for range 2 {
		cycle() // allocator, ORT and guest compile cache warm-up
	}
	s0 := loadertest.SampleProc(t)
	for range n {
		cycle()
	}
	s1 := loadertest.SampleProc(t)
	for range n {
		cycle()
	}
	s2 := loadertest.SampleProc(t)
	t.Logf("after warm-up, %d and %d cycles: %+v, %+v, %+v", n, 2*n, s0, s1, s2)
	// A PP-OCR session with its arena and pool is megabytes: one left
	// behind per cycle is well over 16 MiB in n cycles.
	if grew := s2.RSSKiB - s1.RSSKiB; grew > 16<<10 {
		t.Errorf("RSS grew by %d KiB over cycles %d to %d (%d KiB over the first %d): memory is left behind", grew, n, 2*n, s1.RSSKiB-s0.RSSKiB, n)
	}
	if s2.Threads > s1.Threads+2 {
		t.Errorf("threads went from %d to %d over cycles %d to %d", s1.Threads, s2.Threads, n, 2*n)
	}
	if s2.Goroutines > s0.Goroutines || s2.FDs > s0.FDs {
		t.Errorf("goroutines %d → %d → %d, open files %d → %d → %d: a stopped deployment left them behind",
			s0.Goroutines, s1.Goroutines, s2.Goroutines, s0.FDs, s1.FDs, s2.FDs)
	}
}
