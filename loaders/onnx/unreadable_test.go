package onnx_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
)

// A model file the node's user may not read fails with "permission
// denied", not ONNX Runtime's "system error number 13".
func TestLoadUnreadableSaysPermissionDenied(t *testing.T) {
	l := newLoader(t)
	model, err := os.ReadFile(loadertest.NativeLib(t, ppocrRel))
	if err != nil {
		t.Fatal(err)
	}
	// A directory anyone may enter, holding a file only its owner reads.
	dir, err := os.MkdirTemp("", "unreadable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "m.onnx")
	if err := os.WriteFile(path, model, 0o600); err != nil {
		t.Fatal(err)
	}
	// root reads anything: this goroutine's thread checks file access as
	// nobody instead (the file-system uid is per thread).
	runtime.LockOSThread()
	if os.Geteuid() == 0 {
		syscall.Setfsuid(65534)
		defer syscall.Setfsuid(0)
	} else if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	defer runtime.UnlockOSThread()
	if f, err := os.Open(path); err == nil {
		f.Close()
		t.Fatal("the file is readable: the test cannot make it unreadable here")
	}
	_, err = l.Load(t.Context(), path, loaders.Options{})
	if !errors.Is(err, loaders.ErrInvalidModel) || !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), path) {
		t.Fatalf("unreadable model: %v", err)
	}
}
