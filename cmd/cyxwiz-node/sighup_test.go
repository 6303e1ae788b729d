package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// SIGHUP is what `systemctl reload`, logrotate's postrotate and operators'
// habit send a daemon to reload: the node says it does not reload and
// serves on, and still stops as asked. Go's default action for SIGHUP
// killed it at once, without a drain; so it did for SIGUSR1 (now: debug
// logging on and off) and SIGUSR2 (ignored).
func TestSIGHUPKeepsServing(t *testing.T) {
	bin := daemonBinary(t)
	cfg := filepath.Join(t.TempDir(), "node.toml")
	if err := os.WriteFile(cfg, []byte("[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-c", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for {
			select {
			case <-lines:
			case <-exited:
				return
			}
		}
	})
	// waitLine waits for a log line that contains s.
	waitLine := func(s string) string {
		t.Helper()
		timeout := time.After(crashWait)
		for {
			select {
			case l := <-lines:
				if strings.Contains(l, s) {
					return l
				}
			case <-exited:
				t.Fatalf("daemon exited (%v) waiting for %q", cmd.ProcessState, s)
			case <-timeout:
				t.Fatalf("no log line with %q", s)
			}
		}
	}
	m := servingRE.FindStringSubmatch(waitLine("msg=serving"))
	if m == nil {
		t.Fatal("no address in the serving line")
	}
	conn, err := grpc.NewClient(m[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLine("SIGHUP ignored")
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitLine("level=DEBUG")
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitLine("log level changed (send SIGUSR1 again to switch back)\" level=INFO")
	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitLine("signal=\"user defined signal 2\"")
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	if resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after SIGHUP: %v %v", resp, err)
	}
	// The SIGHUP did not count as a first stop signal: one SIGTERM drains
	// and exits 0.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(crashWait):
		t.Fatal("no exit after SIGTERM")
	}
	if !cmd.ProcessState.Success() {
		t.Errorf("exit after SIGHUP then SIGTERM: %v, want 0", cmd.ProcessState)
	}
}
