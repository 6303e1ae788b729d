package guest_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// startLog reports each "guest instance failed to start" record, and
// whether the pool's Close had returned when it came.
type startLog struct {
	closed *atomic.Bool
	after  chan bool
}

func (h startLog) Enabled(context.Context, slog.Level) bool { return true }
func (h startLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h startLog) WithGroup(string) slog.Handler            { return h }
func (h startLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "guest instance failed to start" {
		h.after <- h.closed.Load()
	}
	return nil
}

// Close stops the instance being made for a caller that stopped waiting
// and returns only once it has stopped: it returned while the instance
// still ran its format_load on the pool's module (closed by then, and its
// runtime with it), and that work then logged, gave back tokens and
// closed instances of a pool long gone.
func TestCloseWaitsForInstanceBeingMade(t *testing.T) {
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	ctx := context.Background()
	mod, err := rt.Compile(ctx, zzSlowFormatGuest(1<<31-1)) // format_load spins for a minute
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(ctx)
	var closed atomic.Bool
	h := startLog{&closed, make(chan bool, 1)}
	p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: "slow-format", Instances: 1, Log: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	// The model is the pool's once FormatLoad starts, even when its
	// first load is cut short.
	lctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = p.FormatLoad(lctx, []byte("model"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FormatLoad: %v, want a deadline", err)
	}
	// A call makes an instance (format_load again) and stops waiting.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = p.FormatInfer(cctx, []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1}, []float32{1})})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FormatInfer: %v, want a deadline", err)
	}
	// Close gives up waiting at once: the instance being made stops.
	gone, cancel := context.WithCancel(ctx)
	cancel()
	p.Close(gone)
	closed.Store(true)
	select {
	case after := <-h.after:
		if after {
			t.Fatal("the instance being made stopped after Close returned")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the instance being made never stopped")
	}
}
