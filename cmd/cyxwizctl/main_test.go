package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/server"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
)

// startNode serves onnxtest's linear model (X f32[-1,3] → Y f32[-1,2]) on a
// real socket and returns its address.
func startNode(t *testing.T) (string, *deploy.Manager) {
	t.Helper()
	dir := t.TempDir()
	if err := onnxtest.WriteAll(dir); err != nil {
		t.Fatal(err)
	}
	addr, models := serveNode(t, deploy.Config{})
	spec := deploy.Spec{Name: "linear", Format: "onnx", Model: artifact.Artifact{URI: "file://" + filepath.Join(dir, "linear.onnx")}}
	if _, err := models.Assign("linear", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	if st, err := models.WaitFor(context.Background(), "linear", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %v", st.Message, err)
	}
	return addr, models
}

// serveNode runs a node with ONNX Runtime and no deployments on a real
// socket until the test ends.
func serveNode(t *testing.T, dc deploy.Config) (string, *deploy.Manager) {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cache, err := artifact.New(filepath.Join(dir, "cache"), 1<<30, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	models := deploy.NewManager(dc, loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib})), cache, nil, log)
	cfg, _ := config.Parse("[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"\"\n", dir, "t.toml")
	srv, err := server.New(cfg, server.Services{Inference: server.NewInference(models), Deployments: server.NewDeployments(models)}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; models.Close(context.Background()) })
	return srv.GRPCAddr().String(), models
}

func writeNPY(t *testing.T, path, descr string, shape []int, data []byte) {
	t.Helper()
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	sh := strings.Join(dims, ", ")
	if len(shape) == 1 {
		sh += ","
	}
	writeNPYHeader(t, path, fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, sh), data)
}

func ctl(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestInferCommand(t *testing.T) {
	addr, _ := startNode(t)
	dir := t.TempDir()
	js := filepath.Join(dir, "x.json")
	os.WriteFile(js, []byte("[[1,1,1],[1,0,2]]"), 0o644)
	code, out, errOut := ctl("--addr", addr, "infer", "linear", "--input", "X="+js)
	if code != 0 || !strings.Contains(out, "Y FP32 [2 2]: [9.5 11 11.5 13]") {
		t.Fatalf("json input: %d %q %q", code, out, errOut)
	}

	npy := filepath.Join(dir, "x.npy")
	data := make([]byte, 12)
	for i, v := range []float32{1, 1, 1} {
		binary.LittleEndian.PutUint32(data[i*4:], math.Float32bits(v))
	}
	writeNPY(t, npy, "<f4", []int{1, 3}, data)
	code, out, errOut = ctl("--addr", addr, "infer", "linear", "--input", "X="+npy, "--json")
	if code != 0 || !strings.Contains(out, `"shape": [`) || !strings.Contains(out, "9.5") {
		t.Fatalf("npy input: %d %q %q", code, out, errOut)
	}

	obj := filepath.Join(dir, "obj.json")
	os.WriteFile(obj, []byte(`{"datatype":"FP32","shape":[1,3],"data":[1,1,1]}`), 0o644)
	if code, out, errOut = ctl("--addr", addr, "infer", "linear", "--input", "X="+obj); code != 0 || !strings.Contains(out, "[9.5 11]") {
		t.Fatalf("object json: %d %q %q", code, out, errOut)
	}

	// Errors: the node's message reaches the user with its code.
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("[[1,2,3,4]]"), 0o644)
	code, _, errOut = ctl("--addr", addr, "infer", "linear", "--input", "X="+bad)
	if code != 1 || !strings.Contains(errOut, "InvalidArgument") || !strings.Contains(errOut, "dimension 1 must be 3") {
		t.Fatalf("bad shape: %d %q", code, errOut)
	}
	code, _, errOut = ctl("--addr", addr, "infer", "nope", "--input", "X="+js)
	if code != 1 || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("unknown model: %d %q", code, errOut)
	}
	if code, _, _ = ctl("--addr", addr, "infer", "linear"); code != 2 {
		t.Fatalf("missing --input: exit %d", code)
	}
	if code, _, _ = ctl("--addr", addr, "bogus"); code != 2 {
		t.Fatalf("unknown command: exit %d", code)
	}
}

func TestHealthAndInfo(t *testing.T) {
	addr, _ := startNode(t)
	if code, out, _ := ctl("--addr", addr, "health"); code != 0 || strings.TrimSpace(out) != "SERVING" {
		t.Fatalf("health: %d %q", code, out)
	}
	t.Setenv("CYXWIZ_ADDR", addr)
	if code, out, _ := ctl("info"); code != 0 || !strings.HasPrefix(out, "cyxwiz-node ") {
		t.Fatalf("info via CYXWIZ_ADDR: %d %q", code, out)
	}
}

func TestReadNPYRejects(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string][]byte{
		"notnpy.npy": []byte("hello world, not numpy"),
		"trunc.npy":  []byte("\x93NUMPY\x01\x00\xff\x00{'descr'"),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, content, 0o644)
		if _, err := readNPY(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	p := filepath.Join(dir, "short.npy")
	writeNPY(t, p, "<f4", []int{2, 3}, make([]byte, 8))
	if _, err := readNPY(p); err == nil {
		t.Error("short data: no error")
	}
	p = filepath.Join(dir, "fortran.npy")
	writeNPY(t, p, "<f4", []int{1}, make([]byte, 4))
	b, _ := os.ReadFile(p)
	os.WriteFile(p, bytes.Replace(b, []byte("False"), []byte("True "), 1), 0o644)
	if _, err := readNPY(p); err == nil || !strings.Contains(err.Error(), "Fortran") {
		t.Errorf("fortran: %v", err)
	}
}

// .npy files from other writers (cnpy, npyz) spell 1-byte types with '<'
// or '=' ('<u1', '=i1', '<b1'); NumPy reads them as uint8/int8/bool.
func TestReadNPYOneByteDescr(t *testing.T) {
	dir := t.TempDir()
	for _, descr := range []string{"<u1", "<i1", "<b1", "=u1", "=i1", "=b1", "|u1"} {
		p := filepath.Join(dir, "x.npy")
		writeNPY(t, p, descr, []int{2}, []byte{1, 0})
		if x, err := readNPY(p); err != nil || x.DType.Size() != 1 || !bytes.Equal(x.Data, []byte{1, 0}) {
			t.Errorf("%s: %v %v", descr, x, err)
		}
	}
	p := filepath.Join(dir, "x.npy")
	writeNPY(t, p, ">u2", []int{1}, []byte{1, 0})
	if _, err := readNPY(p); err == nil {
		t.Error(">u2 (big-endian) accepted")
	}
}

func TestDeployLifecycleCommands(t *testing.T) {
	addr, _ := startNode(t)
	dir := t.TempDir()
	model := filepath.Join(dir, "m.onnx")
	os.WriteFile(model, onnxtest.Linear([][]float32{{1}, {2}, {3}}, []float32{0}), 0o644)
	code, out, errOut := ctl("--addr", addr, "deploy", "--id", "d1", "--name", "lin1", "--model", model, "--format", "onnx")
	if code != 0 || !strings.Contains(out, "d1: ready") {
		t.Fatalf("deploy: %d %q %q", code, out, errOut)
	}
	js := filepath.Join(dir, "x.json")
	os.WriteFile(js, []byte("[[1,1,1]]"), 0o644)
	if code, out, errOut = ctl("--addr", addr, "infer", "lin1", "--input", "X="+js); code != 0 || !strings.Contains(out, "[6]") {
		t.Fatalf("infer deployed: %d %q %q", code, out, errOut)
	}
	if code, out, _ = ctl("--addr", addr, "ls"); code != 0 || !strings.Contains(out, "d1") || !strings.Contains(out, "lin1") {
		t.Fatalf("ls: %d %q", code, out)
	}
	if code, out, _ = ctl("--addr", addr, "models"); code != 0 || !strings.Contains(out, "lin1") {
		t.Fatalf("models: %d %q", code, out)
	}
	if code, out, _ = ctl("--addr", addr, "status", "d1"); code != 0 || !strings.Contains(out, "state:    running") {
		t.Fatalf("status: %d %q", code, out)
	}
	// A conflicting spec under the same id is refused.
	if code, _, errOut = ctl("--addr", addr, "deploy", "--id", "d1", "--name", "other", "--model", model); code != 1 || !strings.Contains(errOut, "AlreadyExists") {
		t.Fatalf("conflict: %d %q", code, errOut)
	}
	// A corrupt model fails with its reason, and the command says so.
	bad := filepath.Join(dir, "bad.onnx")
	os.WriteFile(bad, []byte("garbage"), 0o644)
	if code, out, errOut = ctl("--addr", addr, "deploy", "--id", "d2", "--model", bad); code != 1 || !strings.Contains(errOut, "failed") || !strings.Contains(out, "d2: failed") {
		t.Fatalf("bad model: %d %q %q", code, out, errOut)
	}
	if code, out, _ = ctl("--addr", addr, "stop", "d1"); code != 0 || !strings.Contains(out, "d1: stopped") {
		t.Fatalf("stop: %d %q", code, out)
	}
	if code, out, _ = ctl("--addr", addr, "ls", "--state", "stopped"); code != 0 || !strings.Contains(out, "d1") || strings.Contains(out, "linear") {
		t.Fatalf("ls --state: %d %q", code, out)
	}
	if code, _, errOut = ctl("--addr", addr, "stop", "nope"); code != 1 || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("stop unknown: %d %q", code, errOut)
	}
}
