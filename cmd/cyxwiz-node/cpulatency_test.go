package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// qosAggregate reads the kernel's effective CPU latency limit (µs).
func qosAggregate(t *testing.T) int32 {
	t.Helper()
	f, err := os.Open("/dev/cpu_dma_latency")
	if err != nil {
		t.Skipf("no CPU latency QoS device: %v", err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return int32(binary.NativeEndian.Uint32(b[:]))
}

// TestCPULatencyDaemon: the daemon with inference.cpu_latency = "0us"
// sets the kernel's limit when a gRPC call arrives, withdraws it when calls
// stop, and leaves nothing behind on SIGTERM (serve.go
// wires svc.Busy = Touch and runs the Governor).
func TestCPULatencyDaemon(t *testing.T) {
	f, err := os.OpenFile("/dev/cpu_dma_latency", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("needs root: %v", err)
	}
	f.Close()
	if v := qosAggregate(t); v != 2_000_000_000 {
		t.Skipf("another process holds a CPU latency limit (%d µs)", v)
	}
	dir := t.TempDir()
	bin := daemonBinary(t)
	cfg := filepath.Join(dir, "node.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"\"\n[storage]\nstate_dir = %q\ncache_dir = %q\n[inference]\ncpu_latency = \"0us\"\ncpu_latency_hold = \"50ms\"\n",
		filepath.Join(dir, "s"), filepath.Join(dir, "c"))), 0o644)
	d := startDaemon(t, bin, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(d.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	// Run sets the limit asynchronously to the call that woke it.
	for deadline := time.Now().Add(5 * time.Second); qosAggregate(t) != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after a call: limit %d µs, want 0", qosAggregate(t))
		}
	}
	time.Sleep(300 * time.Millisecond)
	if v := qosAggregate(t); v != 2_000_000_000 {
		t.Fatalf("300ms after the last call: limit %d µs, want withdrawn", v)
	}
	if _, err := healthpb.NewHealthClient(d.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if v := qosAggregate(t); v != 2_000_000_000 {
		t.Fatalf("after exit: limit %d µs", v)
	}
}
