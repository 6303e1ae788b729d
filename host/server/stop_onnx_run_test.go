package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// zzChainModel encodes an ONNX model X[-1,n] -> MatMul(.., W) k times -> Y,
// W an n x n zero initializer: one run costs k * rows * n^2 * 2 flops.
func zzChainModel(n, k int) []byte {
	str := func(b []byte, num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
	}
	msg := func(b []byte, num protowire.Number, m []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), m)
	}
	vint := func(b []byte, num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
	}
	valueInfo := func(name string) []byte {
		var sh []byte
		sh = msg(sh, 1, str(nil, 2, "batch"))
		sh = msg(sh, 1, vint(nil, 1, uint64(n)))
		var tt []byte
		tt = vint(tt, 1, 1) // FLOAT
		tt = msg(tt, 2, sh)
		var b []byte
		b = str(b, 1, name)
		return msg(b, 2, msg(nil, 1, tt))
	}
	var g []byte
	prev := "X"
	for i := range k {
		out := "h" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		if i == k-1 {
			out = "Y"
		}
		var nd []byte
		nd = str(nd, 1, prev)
		nd = str(nd, 1, "W")
		nd = str(nd, 2, out)
		nd = str(nd, 3, out)
		nd = str(nd, 4, "MatMul")
		g = msg(g, 1, nd)
		prev = out
	}
	g = str(g, 2, "chain")
	var w []byte
	w = vint(w, 1, uint64(n))
	w = vint(w, 1, uint64(n))
	w = vint(w, 2, 1)
	w = str(w, 8, "W")
	w = msg(w, 9, make([]byte, 4*n*n))
	g = msg(g, 5, w)
	g = msg(g, 11, valueInfo("X"))
	g = msg(g, 12, valueInfo("Y"))
	var opset []byte
	opset = str(opset, 1, "")
	opset = vint(opset, 2, 17)
	var m []byte
	m = vint(m, 1, 8)
	m = str(m, 2, "zz")
	m = msg(m, 7, g)
	m = msg(m, 8, opset)
	return m
}

// A Stop whose drain timeout passes while a request is inside an ONNX
// Runtime run returns at its drain: the run is stopped (model.Close waits
// for it, and it ran under its caller's context, which nothing cancelled).
func TestStopEndsOnnxRunAtDrain(t *testing.T) {
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	const n, k, rows = 768, 200, 768 // ~180 GFLOP on one thread: a second or more
	path := filepath.Join(dir, "chain.onnx")
	if err := os.WriteFile(path, zzChainModel(n, k), 0o644); err != nil {
		t.Fatal(err)
	}
	log := quietLog()
	m := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib})), nil, nil, log)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	spec := deploy.Spec{Name: "chain", Format: "onnx", Model: artifact.Artifact{URI: "file://" + path},
		Resources: deploy.Resources{CPUThreads: 1}}
	if _, err := m.Assign("chain", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if st, err := m.WaitFor(wctx, "chain", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %v %s", err, st.State, st.Message)
	}
	d, err := m.Model("chain", "")
	if err != nil {
		t.Fatal(err)
	}
	x := tensor.New("X", tensor.FP32, rows, n)
	// Time one run first, so that the test knows how long a run takes here.
	start := time.Now()
	if _, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil); err != nil {
		t.Fatal(err)
	}
	run := time.Since(start)
	t.Logf("one run: %v", run)
	if run < 600*time.Millisecond {
		t.Skipf("a run takes %v here: too short to tell", run)
	}

	inferDone := make(chan time.Time, 1)
	go func() {
		d.Infer(context.Background(), []*tensor.Tensor{x}, nil) // a client without a deadline
		inferDone <- time.Now()
	}()
	time.Sleep(100 * time.Millisecond) // the run is under way
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stopStart := time.Now()
	m.StopDrain(ctx, "chain", 50*time.Millisecond)
	stopped := time.Now()
	ended := <-inferDone
	if took := stopped.Sub(stopStart); took > 150*time.Millisecond+run/3 && !stopped.Before(ended) {
		t.Fatalf("StopDrain (drain 50ms, deadline 200ms) took %v and returned only after the in-flight run ended (run %v)", took, run)
	}
}
