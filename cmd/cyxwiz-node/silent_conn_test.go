package main

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A connection to the gRPC port that never sends a byte (a port scanner's
// connect, a load balancer's TCP check, a hostile client) does not hold
// SIGTERM's stop past shutdown_timeout: gRPC's Stop waits for connections
// still in their handshake, for up to two minutes, and the node exited only
// when that client went away (systemd's stop timeout killed it first).
func TestSilentConnectionDoesNotHoldStop(t *testing.T) {
	const timeout = time.Second
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	appendConfig(t, cfg, "\n[limits]\nshutdown_timeout = \"1s\"\n")
	n := startDaemon(t, bin, cfg)
	addr := n.conn.Target()

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// The listener accepts in order: once a connection made after the
	// silent one is answered, the server holds the silent one too.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	start := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// shutdown_timeout, the second the server gives calls that ignore
	// their cancellation, and the exit itself on a busy machine.
	limit := timeout + time.Second + 2*time.Second
	select {
	case <-n.exited:
	case <-time.After(limit):
		t.Fatalf("no exit %v after SIGTERM (shutdown_timeout %v) while a silent connection is open", limit, timeout)
	}
	t.Logf("exited %v, %v after SIGTERM", n.cmd.ProcessState, time.Since(start))
	if !n.cmd.ProcessState.Success() {
		t.Errorf("exit status %v, want 0", n.cmd.ProcessState)
	}
}
