package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// The process that reads the node's log goes away (a pipe to a log
// shipper that restarts, journald restarting, `serve | tee` whose tee
// dies): the node keeps serving and deploying, its log lines lost. Go
// kills a program that writes to a broken pipe on stderr unless it handles
// SIGPIPE: the node died at its next log line, without a drain.
func TestLogReaderGoneKeepsServing(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "-c", cfg)
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
				return
			}
		}
	}()
	var a string
	select {
	case a = <-addr:
	case <-exited:
		t.Fatal("daemon exited before serving")
	case <-time.After(crashWait):
		t.Fatal("daemon did not report its address")
	}
	r.Close() // the log reader goes away

	conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d := &daemon{cmd: cmd, exited: exited, conn: conn,
		deployments: cyxwizpb.NewDeploymentServiceClient(conn), infer: inference.NewGRPCInferenceServiceClient(conn)}
	// A deployment logs each of its states on the way to Ready.
	m := serveModel(artifacttest.New(t), "m", linearModel(1))
	d.assign(t, m)
	d.waitServing(t, m.id)
	d.check(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	if resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the log reader went away: %v %v", resp, err)
	}
	// And it still stops as asked, exit 0.
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(crashWait):
		t.Fatal("no exit after SIGINT")
	}
	if !cmd.ProcessState.Success() {
		t.Errorf("exit after SIGINT: %v, want 0", cmd.ProcessState)
	}
}
