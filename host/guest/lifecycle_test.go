package guest_test

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A module compiled while the cache directory was gone (removed under the
// node) is freed by its last Close: the failed cache write left a reference
// in wazero besides the compile's own, so its compiled code stayed in
// memory for the runtime's life, once more each time it happened. Freed, a
// later compile of the same bytes is a fresh compile that writes its entry.
func TestCacheTroubleCompileFreedByClose(t *testing.T) {
	bg := context.Background()
	dir := t.TempDir()
	rt := newRuntime(t, guest.Config{CacheDir: dir})
	wasm := zzSlowFormatGuest(3)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	m, err := rt.Compile(bg, wasm)
	if err != nil {
		t.Fatal(err)
	}
	m.Close(bg)
	if n := len(cacheFiles(t, dir)); n != 0 {
		t.Fatalf("the cache holds %d files after the compile that found it gone, want none", n)
	}
	m, err = rt.Compile(bg, wasm)
	if err != nil {
		t.Fatal(err)
	}
	m.Close(bg)
	if n := len(cacheFiles(t, dir)); n != 1 {
		t.Fatalf("the cache holds %d files after compiling the closed module again, want its entry: the closed module's code was still held", n)
	}
}

// A cache directory given relative to the working directory is still
// recognised as the cache when it vanishes: wazero names its files by
// absolute path, and those were not taken for cache trouble, so every
// compile failed as the guest's ABI violation.
func TestRelativeCacheDirTrouble(t *testing.T) {
	bg := context.Background()
	t.Chdir(t.TempDir())
	rt := newRuntime(t, guest.Config{CacheDir: "wasm"})
	if err := os.RemoveAll("wasm"); err != nil {
		t.Fatal(err)
	}
	m, err := rt.Compile(bg, zzSlowFormatGuest(4))
	if err != nil {
		t.Fatalf("compile with the relative cache directory gone: %v", err)
	}
	m.Close(bg)
}

// zzLoggingSlowFormatGuest is zzSlowFormatGuest whose format_load first
// logs "loading" (cyxwiz log) and then spins.
func zzLoggingSlowFormatGuest(spin int32) []byte {
	m := &zzModule{}
	logFn := m.importFunc(cyxwiz.ModuleName, "log", 5) // (i32, i32, i32) -> i32
	zzABIGuest(m)
	empty := zzCat([]byte(abi.Magic), []byte{abi.Version, 0, 0, 0, 0, 0, 0, 0})
	m.data = append(m.data, zzData(16, empty), zzData(64, []byte("loading")))
	ret := zzCat([]byte{0x42}, zzS(abi.Pack(16, uint32(len(empty)))), []byte{0x0b})
	load := m.addFunc(2, zzCat([]byte{1, 1, 0x7f}, // one i32 local
		[]byte{0x41, 0, 0x41}, zzS(64), []byte{0x41, 7, 0x10}, zzU(uint64(logFn)), []byte{0x1a}, // drop(log(0, 64, 7))
		[]byte{0x41}, zzS(int64(spin)), []byte{0x21, 2}, // local2 = spin
		[]byte{0x03, 0x40, 0x20, 2, 0x41, 1, 0x6b, 0x22, 2, 0x0d, 0, 0x0b}, // loop: br_if (local2 -= 1)
		ret))
	infer := m.addFunc(2, zzCat([]byte{0}, ret))
	m.export("format_load", 0x00, load)
	m.export("format_infer", 0x00, infer)
	return zzWithType(m.bytes(), []byte{0x60, 3, 0x7f, 0x7f, 0x7f, 1, 0x7f})
}

// zzWithType appends a function type (index 5) to the type section that
// zzModule.bytes writes first.
func zzWithType(wasm, typ []byte) []byte {
	size, n := binary.Uvarint(wasm[9:])
	types := zzVec(append(slices.Clone(zzTypes), typ))
	return zzCat(wasm[:8], []byte{1}, zzU(uint64(len(types))), types, wasm[9+n+int(size):])
}

// loadingLog signals each "loading" record (zzLoggingSlowFormatGuest's).
type loadingLog chan struct{}

func (h loadingLog) Enabled(context.Context, slog.Level) bool { return true }
func (h loadingLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h loadingLog) WithGroup(string) slog.Handler            { return h }
func (h loadingLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "loading" {
		h <- struct{}{}
	}
	return nil
}

// A caller waiting for an instance that Close stops being made is told
// the pool closed (UNAVAILABLE at the edge), not that it was canceled: it
// got "guest trapped: context canceled", CANCELLED for a client that
// cancelled nothing.
func TestCloseStopsInstanceForWaitingCaller(t *testing.T) {
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	ctx := context.Background()
	mod, err := rt.Compile(ctx, zzLoggingSlowFormatGuest(1<<31-1))
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(ctx)
	loading := make(loadingLog)
	p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: "slow-format", Log: slog.New(loading)})
	if err != nil {
		t.Fatal(err)
	}
	waitLoading := func() { <-loading }
	// The model is the pool's; its first load is cut short.
	lctx, cancel := context.WithCancel(ctx)
	loaded := make(chan error, 1)
	go func() { loaded <- p.FormatLoad(lctx, []byte("model")) }()
	waitLoading()
	cancel()
	if err := <-loaded; !errors.Is(err, context.Canceled) {
		t.Fatalf("FormatLoad: %v, want canceled", err)
	}
	// A patient caller waits for an instance loading the model.
	called := make(chan error, 1)
	go func() {
		_, err := p.FormatInfer(ctx, []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1}, []float32{1})})
		called <- err
	}()
	waitLoading()
	gone, cancel := context.WithCancel(ctx)
	cancel()
	p.Close(gone)
	err = <-called
	if !errors.Is(err, loaders.ErrClosed) || errors.Is(err, context.Canceled) {
		t.Fatalf("the caller whose instance Close stopped got %v, want loaders.ErrClosed", err)
	}
}

// A cache entry that cannot be read even after the cache is cleared (here
// a folder where the entry's file belongs) is cleared too: clearing removed
// files only, so that guest failed to compile on this node for good, as
// an ABI violation of the guest's.
func TestCacheEntryNotAFile(t *testing.T) {
	bg := context.Background()
	dir := t.TempDir()
	wasm := zzSlowFormatGuest(5)
	rt, err := guest.NewRuntime(bg, guest.Config{CacheDir: dir}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	m, err := rt.Compile(bg, wasm)
	if err != nil {
		t.Fatal(err)
	}
	m.Close(bg)
	rt.Close(bg)
	files := cacheFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("cache holds %v, want one entry", files)
	}
	for p := range files {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	rt = newRuntime(t, guest.Config{CacheDir: dir})
	m, err = rt.Compile(bg, wasm)
	if err != nil {
		t.Fatalf("compile over a damaged cache: %v", err)
	}
	m.Close(bg)
}

// After the runtime closes, what needs it fails as closed (UNAVAILABLE at
// the edge), not as the guest's ABI violation (FAILED_PRECONDITION: "guest
// ABI violation: runtime closed"), which marks the guest unusable.
func TestRuntimeClosed(t *testing.T) {
	bg := context.Background()
	rt, err := guest.NewRuntime(bg, guest.Config{CacheDir: t.TempDir()}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	mod, err := rt.Compile(bg, zzSlowFormatGuest(6))
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(bg)
	rt.Close(bg)
	closed := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, loaders.ErrClosed) || errors.Is(err, guest.ErrABI) {
			t.Errorf("%s after the runtime closed: %v, want loaders.ErrClosed", what, err)
		}
	}
	_, err = rt.Compile(bg, zzSlowFormatGuest(7))
	closed("Compile", err)
	_, err = rt.NewPool(bg, mod, guest.PoolConfig{Name: "late"})
	closed("NewPool", err)
}
