package loadertest

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// Proc is what the process holds, as leak tests compare it over cycles.
type Proc struct {
	RSSKiB, Threads, Goroutines, FDs int64
}

// SampleProc collects the garbage, hands free memory back to the OS and
// reads /proc/self: resident memory, OS threads (ONNX Runtime joins a
// session's threads when it is released), goroutines and open files.
func SampleProc(t testing.TB) Proc {
	t.Helper()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("leak test: %v", err)
	}
	var s Proc
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.RSSKiB, _ = strconv.ParseInt(f[0], 10, 64)
		case "Threads":
			s.Threads, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("leak test: %v", err)
	}
	s.FDs = int64(len(fds))
	s.Goroutines = int64(runtime.NumGoroutine())
	return s
}
