package cpulatency

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeDevice is a regular file standing in for the QoS device: every write
// appends, so the last 4 bytes are the value in force.
func fakeDevice(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cpu_dma_latency")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeGovernor is a Governor holding for hold over a request on a fake
// device (closed when the test ends), and the device's path.
func fakeGovernor(t *testing.T, hold time.Duration) (*Governor, string) {
	t.Helper()
	path := fakeDevice(t)
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return NewGovernor(r, 0, hold, slog.New(slog.DiscardHandler)), path
}

// current is the value last written to the fake device, and how many were.
func current(t *testing.T, path string) (int32, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 || len(b)%4 != 0 {
		t.Fatalf("device holds %d bytes, want a whole number of s32 values", len(b))
	}
	return int32(binary.NativeEndian.Uint32(b[len(b)-4:])), len(b) / 4
}

func TestRequest(t *testing.T) {
	path := fakeDevice(t)
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := current(t, path); v != noLimit {
		t.Fatalf("after Open: %d, want no limit (%d)", v, noLimit)
	}
	for _, c := range []struct {
		limit time.Duration
		want  int32
	}{{0, 0}, {1500 * time.Nanosecond, 1}, {-time.Second, 0}, {time.Hour, noLimit}} {
		if err := r.Set(c.limit); err != nil {
			t.Fatal(err)
		}
		if v, _ := current(t, path); v != c.want {
			t.Errorf("Set(%v) wrote %d, want %d", c.limit, v, c.want)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(0); err == nil {
		t.Error("Set after Close succeeded")
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open of a missing device: %v, want a not-exist error", err)
	}
}

// TestGovernor: the limit is set while requests come, withdrawn after hold
// without one, set again by the next request, and withdrawn when Run ends.
func TestGovernor(t *testing.T) {
	const hold = 30 * time.Millisecond
	g, path := fakeGovernor(t, hold)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	waitFor := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if v, _ := current(t, path); v == want {
				return
			}
			if time.Now().After(deadline) {
				v, _ := current(t, path)
				t.Fatalf("device holds %d, want %d", v, want)
			}
			time.Sleep(time.Millisecond)
		}
	}

	if v, _ := current(t, path); v != noLimit {
		t.Fatalf("before any request: %d", v)
	}
	g.Touch()
	waitFor(0)
	// Requests keep coming for 4 holds: the limit stays, written once.
	_, writes := current(t, path)
	for end := time.Now().Add(4 * hold); time.Now().Before(end); {
		g.Touch()
		time.Sleep(hold / 10)
	}
	if v, n := current(t, path); v != 0 || n != writes {
		t.Fatalf("under steady requests: value %d after %d writes, want 0 after %d", v, n, writes)
	}
	waitFor(noLimit) // no requests: withdrawn
	g.Touch()
	waitFor(0)

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, _ := current(t, path); v != noLimit {
		t.Fatalf("after Run ended: %d, want the limit withdrawn", v)
	}
}

// TestGovernorDeviceFails: a device that refuses writes stops the governor
// with a warning, not the node.
func TestGovernorDeviceFails(t *testing.T) {
	r, err := Open(fakeDevice(t))
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // every write fails from here
	g := NewGovernor(r, 0, time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan error, 1)
	go func() { done <- g.Run(context.Background()) }()
	g.Touch()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop after the device failed")
	}
	g.Touch() // must not block with nobody reading
}

// TestRealDevice sets and withdraws a limit on the kernel's device where
// this process may open it (root on Linux).
func TestRealDevice(t *testing.T) {
	r, err := Open(DefaultPath)
	if err != nil {
		t.Skipf("no access to %s: %v", DefaultPath, err)
	}
	defer r.Close()
	if err := r.Set(0); err != nil {
		t.Fatal(err)
	}
	if err := r.Reset(); err != nil {
		t.Fatal(err)
	}
}
