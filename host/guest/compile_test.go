package guest_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// Callers compiling the same bytes share one compilation; the first one
// going away does not fail the others.
func TestCompileOutlivesItsFirstCaller(t *testing.T) {
	bg := context.Background()
	rt, err := guest.NewRuntime(bg, guest.Config{CompileWorkers: 4}, testLog(t)) // no cache: a real compile
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(bg)
	wasm := guesttest.Build(t, "guests/examples/cls-post")
	ctx, cancel := context.WithCancel(bg)
	first := make(chan struct{})
	go func() {
		defer close(first)
		if m, err := rt.Compile(ctx, wasm); err == nil {
			m.Close(bg)
		}
	}()
	time.Sleep(20 * time.Millisecond) // the first caller is compiling
	time.AfterFunc(30*time.Millisecond, cancel)
	m, err := rt.Compile(bg, wasm)
	if err != nil {
		t.Fatalf("second caller: %v", err)
	}
	m.Close(bg)
	<-first
}

// A damaged compilation cache, or one removed under the node, is cleared
// and compiled around: guests still compile.
func TestCompileSurvivesCacheTrouble(t *testing.T) {
	bg := context.Background()
	wasm := guesttest.Build(t, "host/guest/testdata/raw")
	compile := func(t *testing.T, dir string) {
		t.Helper()
		rt, err := guest.NewRuntime(bg, guest.Config{CacheDir: dir}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Close(bg)
		m, err := rt.Compile(bg, wasm)
		if err != nil {
			t.Fatal(err)
		}
		m.Close(bg)
	}
	t.Run("truncated entry", func(t *testing.T) {
		dir := t.TempDir()
		compile(t, dir)
		truncated := 0
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && fi.Size() > 1000 {
				truncated++
				return os.Truncate(p, fi.Size()/2)
			}
			return nil
		})
		if truncated == 0 {
			t.Fatal("no cache entry written")
		}
		compile(t, dir)
	})
	t.Run("directory removed", func(t *testing.T) {
		dir := t.TempDir()
		rt, err := guest.NewRuntime(bg, guest.Config{CacheDir: dir}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Close(bg)
		os.RemoveAll(dir)
		m, err := rt.Compile(bg, wasm)
		if err != nil {
			t.Fatal(err)
		}
		m.Close(bg)
	})
}
