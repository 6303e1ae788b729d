package guest_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// cacheDir is wazero's compilation cache shared by the test runs.
func cacheDir() string { return filepath.Join(os.TempDir(), "cyxwiz-wazero-cache") }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newRuntime(t testing.TB, cfg guest.Config) *guest.Runtime {
	t.Helper()
	if cfg.CacheDir == "" {
		cfg.CacheDir = cacheDir()
	}
	rt, err := guest.NewRuntime(context.Background(), cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	return rt
}

// compile builds the guest in dir and compiles it in rt.
func compile(t testing.TB, rt *guest.Runtime, dir string) *guest.Module {
	t.Helper()
	m, err := rt.Compile(context.Background(), guesttest.Build(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m
}

func newPool(t testing.TB, rt *guest.Runtime, dir string, cfg guest.PoolConfig) *guest.Pool {
	t.Helper()
	m := compile(t, rt, dir)
	if cfg.Name == "" {
		cfg.Name = "test/" + filepath.Base(dir)
	}
	p, err := rt.NewPool(context.Background(), m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}
