package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// SIGTERM while a batch runs longer than limits.shutdown_timeout: the node
// exits 0 within shutdown_timeout, not twice that: the calls' drain and
// then the deployments' drain each waited the whole timeout.
func TestTermBoundedByShutdownTimeout(t *testing.T) {
	const timeout = time.Second
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	editConfig(t, cfg, "http = \"\"\n", "http = \"\"\nmax_message_size = \"160MiB\"\n")
	appendConfig(t, cfg, `
[limits]
shutdown_timeout = "1s"

[inference.batching]
max_batch_size = 12288
preferred_batch_sizes = [12288]
max_queue_delay_us = 30000000
instances = 1
`)
	srv := artifacttest.New(t)
	n := startDaemon(t, bin, cfg)
	// Three requests of 4096 rows, batched into one run through a
	// 4096×4096 layer: one MatMul of ~400 GFLOP, seconds on one thread,
	// which ONNX Runtime does not cut short.
	const k = 4096
	pattern := make([]float32, 2*k)
	for i := range pattern {
		pattern[i] = float32(i%7) / 7
	}
	w := make([][]float32, k)
	for i := range w {
		w[i] = pattern[i%k/2 : i%k/2+k]
	}
	m := serveModel(srv, "heavy", testModel{data: onnxtest.Linear(w, make([]float32, k))})
	n.assign(t, m)
	n.waitServing(t, m.id)

	before := cpuTime(t, n.cmd.Process.Pid)
	errc := make(chan error, 3)
	req := &inference.ModelInferRequest{ModelName: m.name,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{k, k}}},
		RawInputContents: [][]byte{f32bytes(make([]float32, k*k))}}
	for range 3 {
		go func() {
			_, err := n.infer.ModelInfer(context.Background(), req, grpc.MaxCallSendMsgSize(160<<20), grpc.MaxCallRecvMsgSize(160<<20))
			errc <- err
		}()
	}
	// The run has started once the daemon has spent a second of CPU on
	// it (decoding the requests takes far less). Nothing signals it: this
	// looks every 10 ms.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for cpuTime(t, n.cmd.Process.Pid)-before < time.Second {
		select {
		case <-tick.C:
		case err := <-errc:
			t.Fatalf("the request ended before the stop: %v", err)
		}
	}

	start := time.Now()
	n.term(t)
	took := time.Since(start)
	t.Logf("exited %v, %v after SIGTERM (shutdown_timeout %v); requests: %v, %v, %v", n.cmd.ProcessState, took, timeout, <-errc, <-errc, <-errc)
	if !n.cmd.ProcessState.Success() {
		t.Errorf("exit status %v, want 0", n.cmd.ProcessState)
	}
	// Beyond the timeout: the exit itself (a few hundred ms to free a
	// gigabyte of tensors and end a run in progress).
	if limit := timeout + 900*time.Millisecond; took > limit {
		t.Errorf("the stop took %v; shutdown_timeout is %v", took, timeout)
	}
}

// appendConfig adds text to the node.toml at path.
func appendConfig(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// editConfig replaces old, which must be there, with new in the node.toml
// at path.
func editConfig(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q", path, old)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cpuTime is the user and system CPU time process pid has used so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name (which may hold spaces), from
	// field 3 on: utime and stime are fields 14 and 15, in clock ticks
	// (USER_HZ, 100 on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
