package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/cpulatency"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// BenchmarkServing is `make bench-onnx`: on the PP-OCR classifier at
// 3×48×192 it measures, in one run,
//
//	A  in-process Run at batch 1 from one goroutine (latency and rate)
//	B  the best in-process rate over batch sizes × goroutines (the machine's limit)
//	   ModelInfer over loopback gRPC at concurrency 1 (latency added to A)
//	   the same request to a null model that computes nothing: the round
//	   trip's floor on this machine, which added latency cannot go below
//	A' A with the goroutine parked for the floor after each run, as a
//	   served model's thread is between requests: a run after its thread
//	   slept is slower than back to back, on this VM by tens of µs
//	   ModelInfer at concurrency 16 with dynamic batching (rate, vs B)
//	   the transport's CPU per request at c=16 (null model)
//	   A, c=1 and the null model again with inference.cpu_latency = "0us"
//	   in force, where the process may set it (root)
//
// and prints one summary line. Run it with -benchtime 1x: each phase sizes
// itself by wall time, not by b.N.
func BenchmarkServing(b *testing.B) {
	lib := loadertest.NativeLib(b, "onnxruntime/libonnxruntime.so.1")
	path := loadertest.NativeLib(b, "models/ppocr-cls.onnx")
	ctx := context.Background()
	loader := onnx.New(onnx.Config{LibraryPath: lib})
	// The deployment's ONNX Runtime threads per run (BENCH_THREADS) and
	// instances (BENCH_INSTANCES); A uses the same session settings.
	threads := envInt("BENCH_THREADS", 1)
	load := func(threads int) loaders.Model {
		m, err := loader.Load(ctx, path, loaders.Options{IntraOpThreads: threads, InterOpThreads: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	model := load(threads)
	sweepModels := map[int]loaders.Model{threads: model}
	for _, t := range []int{1, 2} {
		if sweepModels[t] == nil {
			sweepModels[t] = load(t)
		}
	}

	phase := time.Duration(envInt("BENCH_PHASE_MS", 2000)) * time.Millisecond
	input := func(batch int) *tensor.Tensor {
		t := tensor.New("x", tensor.FP32, int64(batch), 3, 48, 192)
		v := tensor.View[float32](t)
		for i := range v {
			v[i] = rand.Float32()*2 - 1
		}
		return t
	}

	x1 := input(1)
	inproc := func() {
		if _, err := model.Infer(ctx, []*tensor.Tensor{x1}, nil); err != nil {
			b.Fatal(err)
		}
	}

	// B: sweep ONNX Runtime threads per run × batch × goroutines.
	var best float64
	var bestAt string
	var bestRun func() error
	var bestBatch, bestG int
	for _, t := range []int{1, 2} {
		m := sweepModels[t]
		for _, batch := range []int{1, 2, 4, 8, 16} {
			x := input(batch)
			for _, g := range []int{1, 2, 4} {
				if t*g > 4 {
					continue
				}
				run := func() error {
					_, err := m.Infer(ctx, []*tensor.Tensor{x}, nil)
					return err
				}
				rate := parallelRate(phase/3, g, run) * float64(batch)
				fmt.Printf("B  in-process %d thread(s) batch %2d × %d goroutines: %.0f img/s\n", t, batch, g, rate)
				if rate > best {
					best, bestAt = rate, fmt.Sprintf("threads=%d,batch=%d,g=%d", t, batch, g)
					bestRun, bestBatch, bestG = run, batch, g
				}
			}
		}
	}
	fmt.Printf("B  sweep best: %.0f img/s (%s)\n", best, bestAt)

	// The node: the same model through deployment, engine and KServe gRPC.
	reg := loaders.NewRegistry(loader, nullLoader{})
	models := deploy.NewManager(deploy.Config{Load: loaders.Options{IntraOpThreads: threads, InterOpThreads: 1}}, reg, nil, nil, quietLog())
	defer models.Close(ctx)
	if _, err := models.Assign("ppocr-cls", deploy.Spec{Name: "ppocr-cls", Format: "onnx", Model: artifact.Artifact{URI: "file://" + path},
		Batching: engine.Config{MaxBatchSize: envInt("BENCH_MAX_BATCH", 16), Instances: envInt("BENCH_INSTANCES", 2), QueueCapacity: 256,
			MaxQueueDelay: time.Duration(envInt("BENCH_DELAY_US", 0)) * time.Microsecond}}, deploy.OwnerOperator); err != nil {
		b.Fatal(err)
	}
	if _, err := models.Assign("null", deploy.Spec{Name: "null", Format: "null", Model: artifact.Artifact{URI: "file://" + path},
		Batching: engine.Config{MaxBatchSize: 16, Instances: 2, QueueCapacity: 256}}, deploy.OwnerOperator); err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"ppocr-cls", "null"} {
		if st, err := models.WaitFor(ctx, name, deploy.Settled); err != nil || !st.State.Serving() {
			b.Fatalf("deploy %s: %v %v", name, st.Message, err)
		}
	}
	cfg := testConfig(&testing.T{})
	srv, err := New(cfg, Services{Inference: NewInference(models)}, quietLog())
	if err != nil {
		b.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(sctx) }()
	defer func() { stop(); <-done }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(windowSize), grpc.WithInitialConnWindowSize(connWindowSize),
		grpc.WithReadBufferSize(bufferSize), grpc.WithWriteBufferSize(bufferSize))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	req := &inference.ModelInferRequest{ModelName: "ppocr-cls",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: x1.Shape}},
		RawInputContents: [][]byte{x1.Data}}
	// The load generator shares the node's two cores, so it sends the
	// request encoded once (as a remote client's own CPU would): what is
	// measured is the node's serving path, not the client's marshalling.
	wire, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	pre := grpc.ForceCodecV2(preEncoded{wire})
	infer := func() error {
		var resp inference.ModelInferResponse
		return conn.Invoke(ctx, inference.GRPCInferenceService_ModelInfer_FullMethodName, &wire, &resp, pre)
	}
	req.ModelName = "null"
	nullWire, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	inferNull := func() {
		var resp inference.ModelInferResponse
		if err := conn.Invoke(ctx, inference.GRPCInferenceService_ModelInfer_FullMethodName, &nullWire, &resp, pre); err != nil {
			b.Fatal(err)
		}
	}
	for range 20 { // warm the connection and the engines
		if err := infer(); err != nil {
			b.Fatal(err)
		}
		inferNull()
	}

	// The machine's speed drifts by tens of percent over seconds (it is a
	// shared VM), so each reference is measured in rounds interleaved with
	// what it is compared to: drift then hits both sides alike.
	rounds := envInt("BENCH_ROUNDS", 6)
	slice := phase / time.Duration(rounds) * 2
	d, _ := models.Model("ppocr-cls", "")
	var aLat, gLat, nLat, aIdle []time.Duration
	var engineQueue, engineCompute time.Duration
	var engineN uint64
	// The same three, with inference.cpu_latency = "0us" in force (idle
	// CPUs poll instead of halting), where this process may set it.
	qos, qosErr := cpulatency.Open(cpulatency.DefaultPath)
	if qosErr == nil {
		defer qos.Close()
	}
	var aLatQ, gLatQ, nLatQ, aIdleQ []time.Duration
	inferOK := func() {
		if err := infer(); err != nil {
			b.Fatal(err)
		}
	}
	for range rounds {
		aLat = append(aLat, timeLoop(slice/2, inproc)...)
		st0 := d.Status().Stats
		gLat = append(gLat, timeLoop(slice/2, inferOK)...)
		st1 := d.Status().Stats
		engineQueue += st1.QueueTime - st0.QueueTime
		engineCompute += st1.ComputeTime - st0.ComputeTime
		engineN += st1.Executions - st0.Executions
		nLat = append(nLat, timeLoop(slice/4, inferNull)...)
		aIdle = append(aIdle, idleLoop(slice/2, pct(nLat, 50), inproc)...)
		if qos != nil {
			if err := qos.Set(0); err != nil {
				b.Fatal(err)
			}
			aLatQ = append(aLatQ, timeLoop(slice/2, inproc)...)
			gLatQ = append(gLatQ, timeLoop(slice/2, inferOK)...)
			nLatQ = append(nLatQ, timeLoop(slice/4, inferNull)...)
			aIdleQ = append(aIdleQ, idleLoop(slice/2, pct(nLatQ, 50), inproc)...)
			if err := qos.Reset(); err != nil {
				b.Fatal(err)
			}
		}
	}
	aP50, aP99 := pct(aLat, 50), pct(aLat, 99)
	aRate := float64(len(aLat)) / sum(aLat).Seconds()
	fmt.Printf("A  in-process batch 1, 1 goroutine: %.0f req/s  p50 %v  p99 %v\n", aRate, aP50, aP99)
	gP50, gP99 := pct(gLat, 50), pct(gLat, 99)
	added := gP50 - aP50
	n1 := time.Duration(max(engineN, 1))
	fmt.Printf("   gRPC ModelInfer c=1: p50 %v  p99 %v  added p50 %v  (engine: queue %v + compute %v per request)\n", gP50, gP99, added,
		engineQueue/n1, engineCompute/n1)
	nP50, nP99 := pct(nLat, 50), pct(nLat, 99)
	fmt.Printf("   gRPC ModelInfer c=1, null model (same request, no compute): p50 %v  p99 %v  = the round trip's floor\n", nP50, nP99)
	idleP50 := pct(aIdle, 50)
	fmt.Printf("A' in-process batch 1, the thread parked for the floor between runs: run p50 %v (%+v vs A); gRPC c=1 adds %v to it\n",
		idleP50, idleP50-aP50, gP50-idleP50)
	qosKeys := " cpu_latency0=unavailable"
	if qos != nil {
		aQ, gQ, nQ, iQ := pct(aLatQ, 50), pct(gLatQ, 50), pct(nLatQ, 50), pct(aIdleQ, 50)
		fmt.Printf("   with inference.cpu_latency = \"0us\" (idle CPUs poll), interleaved: A p50 %v, gRPC c=1 p50 %v  p99 %v  added p50 %v, null model p50 %v, A' p50 %v (gRPC adds %v to it)\n",
			aQ, gQ, pct(gLatQ, 99), gQ-aQ, nQ, iQ, gQ-iQ)
		qosKeys = fmt.Sprintf(" added_p50_cpu_latency0_us=%d floor_p50_cpu_latency0_us=%d added_vs_parked_p50_cpu_latency0_us=%d",
			(gQ - aQ).Microseconds(), nQ.Microseconds(), (gQ - iQ).Microseconds())
		b.ReportMetric(float64((gQ - aQ).Microseconds()), "added_p50_cpu_latency0_us")
	} else {
		fmt.Printf("   inference.cpu_latency not measured: %v\n", qosErr)
	}

	// c=16 over a few connections, as a client pool would: one HTTP/2
	// connection serialises every 110 KB request through one reader.
	conns := make([]*grpc.ClientConn, envInt("BENCH_CONNS", 4))
	for i := range conns {
		if conns[i], err = grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(windowSize), grpc.WithInitialConnWindowSize(connWindowSize),
			grpc.WithReadBufferSize(bufferSize), grpc.WithWriteBufferSize(bufferSize)); err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
	}
	var next atomic.Uint32
	// callPool sends the pre-encoded request w on the next connection.
	callPool := func(w *[]byte) func() error {
		return func() error {
			c := conns[int(next.Add(1))%len(conns)]
			var resp inference.ModelInferResponse
			return c.Invoke(ctx, inference.GRPCInferenceService_ModelInfer_FullMethodName, w, &resp, pre)
		}
	}
	c16call := callPool(&wire)
	// The engine alone at c=16 (16 goroutines calling the deployment, no
	// gRPC) separates what batching reaches from what the transport costs.
	engineCall := func() error {
		_, err := d.Infer(sctx, []*tensor.Tensor{x1}, nil)
		return err
	}
	// The transport's CPU per request at c=16, from the null model: the
	// share of both cores that the ONNX runs cannot have. The load
	// generator's own gRPC work runs in this process and is counted.
	nullCall := callPool(&nullWire)
	cpu0 := processCPU()
	t0 := time.Now()
	nullRate := parallelRate(slice, 16, nullCall)
	nullCPU := time.Duration(float64(processCPU()-cpu0) / (nullRate * time.Since(t0).Seconds()))
	var bImgs, cReqs, eReqs float64
	var eStats, cStats batchCount
	for range rounds {
		bImgs += parallelRate(slice, bestG, bestRun) * float64(bestBatch)
		st0 := d.Status().Stats
		eReqs += parallelRate(slice, 16, engineCall)
		st1 := d.Status().Stats
		cReqs += parallelRate(slice, 16, c16call)
		st2 := d.Status().Stats
		eStats.add(st0, st1)
		cStats.add(st1, st2)
	}
	best, c16, e16 := bImgs/float64(rounds), cReqs/float64(rounds), eReqs/float64(rounds)
	fmt.Printf("B  limit (%s, interleaved with c=16): %.0f img/s\n", bestAt, best)
	fmt.Printf("   engine c=16 in-process, no gRPC: %.0f req/s = %.2f × B  (executions %d, batch sizes %v)\n", e16, e16/best, eStats.executions, eStats.sizes)
	fmt.Printf("   gRPC ModelInfer c=16, dynamic batching: %.0f req/s  (executions %d, batch sizes %v)\n", c16, cStats.executions, cStats.sizes)
	fmt.Printf("   transport at c=16 (null model, client and server in this process): %.0f req/s, %v CPU per request = %.1f%% of %d cores at the c=16 rate\n",
		nullRate, nullCPU, 100*nullCPU.Seconds()*c16/float64(runtime.NumCPU()), runtime.NumCPU())

	ratio := c16 / best
	b.ReportMetric(float64(added.Microseconds()), "added_p50_us")
	b.ReportMetric(ratio, "c16_vs_limit")
	b.ReportMetric(e16/best, "engine_c16_vs_limit")
	b.ReportMetric(float64(nP50.Microseconds()), "floor_p50_us")
	fmt.Printf("bench-onnx: added_p50_us=%d c16_vs_limit=%.2f engine_c16_vs_limit=%.2f floor_p50_us=%d added_vs_parked_p50_us=%d a_p50_us=%d a_parked_p50_us=%d a_p99_us=%d grpc_p50_us=%d grpc_p99_us=%d a_rps=%.0f limit_rps=%.0f c16_rps=%.0f transport_cpu_us=%d%s\n",
		added.Microseconds(), ratio, e16/best, nP50.Microseconds(), (gP50 - idleP50).Microseconds(), aP50.Microseconds(), idleP50.Microseconds(), aP99.Microseconds(),
		gP50.Microseconds(), gP99.Microseconds(), aRate, best, c16, nullCPU.Microseconds(), qosKeys)
}

// nullLoader loads models that take the classifier's input and compute
// nothing: their round trip is the transport's and the serving path's cost
// alone.
type nullLoader struct{}

func (nullLoader) Format() string   { return "null" }
func (nullLoader) Available() error { return nil }
func (nullLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return nullModel{}, nil
}

type nullModel struct{}

func (nullModel) Info() loaders.Info {
	return loaders.Info{Format: "null", Platform: "null",
		Inputs:  []loaders.TensorSpec{{Name: "x", DType: tensor.FP32, Shape: []int64{-1, 3, 48, 192}}},
		Outputs: []loaders.TensorSpec{{Name: "softmax_0.tmp_0", DType: tensor.FP32, Shape: []int64{-1, 2}}}}
}

func (nullModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	return []*tensor.Tensor{tensor.New("softmax_0.tmp_0", tensor.FP32, in[0].Shape[0], 2)}, nil
}

func (nullModel) Close() error { return nil }

// batchCount sums executions and the batch-size histogram over phases.
type batchCount struct {
	executions uint64
	sizes      map[int]uint64
}

// add counts what happened between two snapshots of a deployment's stats.
func (c *batchCount) add(before, after engine.Stats) {
	if c.sizes == nil {
		c.sizes = map[int]uint64{}
	}
	c.executions += after.Executions - before.Executions
	for size, n := range after.BatchSizes {
		if d := n - before.BatchSizes[size]; d > 0 {
			c.sizes[size] += d
		}
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// preEncoded is a client codec that sends already-marshalled request bytes
// and decodes responses as protobuf.
type preEncoded struct{ wire []byte }

func (preEncoded) Name() string { return "proto" }

func (p preEncoded) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(*[]byte); ok {
		return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
	}
	return nil, fmt.Errorf("preEncoded: cannot marshal %T", v)
}

func (preEncoded) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), v.(proto.Message))
}

// idleLoop is timeLoop with the goroutine parked for gap after each call,
// as a served model's thread is while the reply and the next request
// cross the transport; only the calls are timed.
func idleLoop(d, gap time.Duration, f func()) []time.Duration {
	var out []time.Duration
	var sleep func(time.Duration)
	if gap > 0 {
		var done func()
		sleep, done = preciseSleeper()
		defer done()
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		s := time.Now()
		f()
		out = append(out, time.Since(s))
		if gap > 0 {
			sleep(gap)
		}
	}
	return out
}

// preciseSleeper returns a sleep that parks the goroutine in the runtime's
// poller on a timerfd, as a served model's goroutine waits for the network,
// for d to the microsecond: time.Sleep on an otherwise idle process sleeps
// whole milliseconds (epoll_wait's timeout), so A' measured runs after
// 1.1 ms asleep, not after the floor.
func preciseSleeper() (sleep func(time.Duration), done func()) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return time.Sleep, func() {}
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	var buf [8]byte
	return func(d time.Duration) {
		spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, 1)))}
		if unix.TimerfdSettime(fd, 0, &spec, nil) != nil {
			time.Sleep(d)
			return
		}
		f.Read(buf[:])
	}, func() { f.Close() }
}

// processCPU is the user and system time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timeLoop calls f until d has passed and returns each call's duration.
func timeLoop(d time.Duration, f func()) []time.Duration { return idleLoop(d, 0, f) }

// parallelRate runs f from g goroutines for d and returns calls per second.
func parallelRate(d time.Duration, g int, f func() error) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if f() != nil {
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func sum(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}
