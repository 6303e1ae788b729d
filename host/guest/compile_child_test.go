package guest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// compileChildEnv names the module a child test process compiles.
const compileChildEnv = "CYXWIZ_TEST_COMPILE_CHILD"

// TestMain runs a child compile when asked (see compileInChild), the tests
// otherwise.
func TestMain(m *testing.M) {
	if path := os.Getenv(compileChildEnv); path != "" {
		os.Exit(compileChild(path))
	}
	os.Exit(m.Run())
}

// compileChild compiles the module at path with its address space capped
// at 8 GiB (a module that takes all it can must kill the child alone) and
// prints what it allocated and whether the error was ErrABI.
func compileChild(path string) int {
	wasm, err := os.ReadFile(path)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: 8 << 30, Max: 8 << 30}); err != nil {
		fmt.Println(err)
		return 1
	}
	rt, err := guest.NewRuntime(context.Background(), guest.Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = rt.Compile(context.Background(), wasm)
	runtime.ReadMemStats(&after)
	fmt.Printf("COMPILE-RESULT alloc_mib=%d abi=%t err=%v\n", (after.TotalAlloc-before.TotalAlloc)>>20, errors.Is(err, guest.ErrABI), err)
	return 0
}

// childResult is what a child compile reported.
type childResult struct {
	mib  int    // allocated by the compile
	abi  bool   // the compile failed with ErrABI
	line string // the result line, or the line telling how the child died
}

// compileInChild compiles wasm in a child process of the test binary: a
// module that kills the process compiling it (a fatal out-of-memory, which
// no recover catches) kills only the child. It fails the test if the child
// died.
func compileInChild(t *testing.T, wasm []byte) childResult {
	t.Helper()
	path := filepath.Join(t.TempDir(), "module.wasm")
	if err := os.WriteFile(path, wasm, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), compileChildEnv+"="+path)
	out, err := cmd.CombinedOutput()
	r := childResult{line: tellingLine(string(out))}
	if err != nil {
		t.Fatalf("compiling a %d-byte module killed the process (%v): %s", len(wasm), err, r.line)
	}
	fmt.Sscanf(r.line, "COMPILE-RESULT alloc_mib=%d abi=%t", &r.mib, &r.abi)
	return r
}

// tellingLine is the child's result line, or else the line saying how it
// died.
func tellingLine(s string) string {
	for _, mark := range []string{"COMPILE-RESULT", "fatal error", "panic"} {
		if i := strings.Index(s, mark); i >= 0 {
			return strings.SplitN(s[i:], "\n", 2)[0]
		}
	}
	return strings.SplitN(strings.TrimSpace(s), "\n", 2)[0]
}
