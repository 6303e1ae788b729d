package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// crashWait bounds each wait on the daemon (start, a deployment coming up).
const crashWait = 30 * time.Second

// The daemon is killed with SIGKILL right after acknowledging a deployment,
// in the middle of a download, in the middle of a load and while serving.
// After each kill it restarts on the same state_dir and every deployment it
// ever acknowledged comes back Ready and answers correctly; a partial
// download is thrown away, never used.
func TestCrashRecovery(t *testing.T) {
	bin := daemonBinary(t)
	cfg, stateDir, cacheDir := nodeConfig(t)
	srv := artifacttest.New(t)
	artifacts := filepath.Join(cacheDir, "artifacts")

	// Every deployment the daemon acknowledged, with the answer it must give.
	var acked []crashModel
	// killAndCheck kills n, starts a new daemon and checks every deployment.
	killAndCheck := func(n *daemon, point string) *daemon {
		t.Helper()
		n.kill(t)
		n = startDaemon(t, bin, cfg)
		for _, m := range acked {
			n.waitServing(t, m.id)
			n.check(t, m)
		}
		checkCache(t, artifacts, acked)
		t.Logf("killed %s: %d deployment(s) back and answering", point, len(acked))
		return n
	}

	n := startDaemon(t, bin, cfg)

	// (a) Right after the acknowledgement.
	a := serveModel(srv, "a", linearModel(1))
	n.assign(t, a)
	acked = append(acked, a)
	n = killAndCheck(n, "right after AssignDeployment returned")

	// (b) In the middle of the download: the server has sent half the file
	// and waits; the daemon has written that half to its tmp/.
	b := serveModel(srv, "b", linearModel(2))
	srv.Stall(b.path) // released by Unstall below, for the next node
	n.assign(t, b)
	acked = append(acked, b)
	waitStalled(t, srv, "b")
	half := len(b.data) / 2
	part := waitPartial(t, filepath.Join(artifacts, "tmp"), int64(half))
	srv.Unstall(b.path) // the next node is served; this request waits for the kill
	n = killAndCheck(n, "mid-download")
	if _, err := os.Stat(part); !os.IsNotExist(err) {
		t.Errorf("partial download %s still there after the restart: %v", part, err)
	}
	if !n.logged("kept_to_resume=1") {
		t.Error("the restarted daemon did not report keeping the partial download")
	}
	// The restarted node asked for the second half only.
	if got, want := srv.Ranges(b.path), []string{"", fmt.Sprintf("bytes=%d-", half)}; !slices.Equal(got, want) {
		t.Errorf("b's requests had Range headers %q, want %q (the cut one, then a resume)", got, want)
	}

	// (c) While loading: a 16 MiB model takes a while to load; kill as soon
	// as WatchDeployments reports Loading.
	c := serveModel(srv, "c", bigModel())
	n.assign(t, c)
	acked = append(acked, c)
	watch, stop := n.watch(t, c.id) // the snapshot comes first: no state is missed
wait:
	for {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch c: %v", err)
		}
		switch ev.Status.State {
		case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_LOADING:
			break wait
		case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING:
			t.Log("c was Ready before the watch saw it Loading")
			break wait
		case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED:
			t.Fatalf("c failed: %s", ev.Status.Message)
		}
	}
	n.kill(t)
	stop()
	// What the daemon had stored when it died tells whether the load was cut
	// (Ready is stored as soon as the load ends).
	if s := storedState(t, filepath.Join(stateDir, "deployments.db"), c.id); s == "Loading" {
		t.Logf("killed mid-load: c's last stored state is %s", s)
	} else {
		t.Logf("the kill landed after c's load finished (stored state %s)", s)
	}
	n = killAndCheck(n, "while loading")

	// (d) While serving.
	d := serveModel(srv, "d", linearModel(4))
	n.assign(t, d)
	acked = append(acked, d)
	n.waitServing(t, d.id)
	n.check(t, d)
	n = killAndCheck(n, "while Ready")

	// c and d were in the cache when the daemon died: restarts never
	// fetched them again. (a may have been cut mid-download.)
	for _, m := range []crashModel{c, d} {
		if h := srv.Hits(m.path); h != 1 {
			t.Errorf("%s downloaded %d times; a verified artifact is never fetched again", m.id, h)
		}
	}
	if h := srv.Hits(a.path); h < 1 || h > 2 {
		t.Errorf("a downloaded %d times", h)
	}
	n.kill(t)
}

// testModel is a model file and one question it answers: X (one row) gives
// Y = want.
type testModel struct {
	data    []byte
	x, want []float32
}

// crashModel is one deployment of the test.
type crashModel struct {
	testModel
	id, name, path string
	uri, sha256    string
}

// linearModel is onnxtest's linear model with bias (b, -b): X=[1,1,1] gives
// Y=[9+b, 12-b].
func linearModel(b float32) testModel {
	m := onnxtest.Linear([][]float32{{1, 2}, {3, 4}, {5, 6}}, []float32{b, -b})
	return testModel{m, []float32{1, 1, 1}, []float32{9 + b, 12 - b}}
}

// bigModel is a 2048×2048 linear model (16 MiB of weights) with
// W[i][j] = (i+j) % 5 and no bias; X of ones gives the column sums.
func bigModel() testModel {
	const k = 2048
	pattern := make([]float32, k+5)
	for i := range pattern {
		pattern[i] = float32(i % 5)
	}
	w := make([][]float32, k)
	for i := range w {
		w[i] = pattern[i%5 : i%5+k] // rows are windows of one pattern
	}
	x := make([]float32, k)
	want := make([]float32, k)
	for i := range x {
		x[i] = 1
	}
	for j := range want {
		for i := range k {
			want[j] += float32((i + j) % 5)
		}
	}
	return testModel{onnxtest.Linear(w, make([]float32, k)), x, want}
}

// serveModel serves tm on srv and returns the deployment of it named name.
func serveModel(srv *artifacttest.Server, name string, tm testModel) crashModel {
	m := crashModel{testModel: tm, id: "dep-" + name, name: name, path: "/models/" + name + ".onnx"}
	a := srv.Add(m.path, tm.data)
	m.uri, m.sha256 = a.URI, a.SHA256
	return m
}

// waitPartial waits until dir holds a partial download of at least size
// bytes and returns its path. The file is another process's: nothing
// signals it, so this checks every 10 ms.
func waitPartial(t *testing.T, dir string, size int64) string {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(crashWait)
	for {
		des, _ := os.ReadDir(dir)
		for _, de := range des {
			if fi, err := de.Info(); err == nil && strings.HasSuffix(de.Name(), ".part") && fi.Size() >= size {
				return filepath.Join(dir, de.Name())
			}
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no partial download of %d bytes in %s", size, dir)
		}
	}
}

// storedState reads id's last stored state from a stopped daemon's store.
func storedState(t *testing.T, path, id string) string {
	t.Helper()
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec, err := st.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return rec.State
}

// checkCache fails unless tmp/ is empty and every file in sha256/ has the
// content its name says, including each acknowledged model.
func checkCache(t *testing.T, dir string, models []crashModel) {
	t.Helper()
	if des, err := os.ReadDir(filepath.Join(dir, "tmp")); err != nil || len(des) > 0 {
		t.Errorf("cache tmp/ after restart: %d entries, %v", len(des), err)
	}
	des, err := os.ReadDir(filepath.Join(dir, "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, "sha256", de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if artifacttest.Digest(b) != de.Name() {
			t.Errorf("cached %s holds other content (%d bytes)", de.Name(), len(b))
		}
		names = append(names, de.Name())
	}
	for _, m := range models {
		if !slices.Contains(names, m.sha256) {
			t.Errorf("%s's artifact %s is not in the cache", m.id, m.sha256)
		}
	}
}

// --- the daemon ------------------------------------------------------------------

// daemon is a running cyxwiz-node child process and clients to it.
type daemon struct {
	cmd         *exec.Cmd
	exited      chan struct{}
	conn        *grpc.ClientConn
	deployments cyxwizpb.DeploymentServiceClient
	infer       inference.GRPCInferenceServiceClient

	mu  sync.Mutex
	log []string
}

var servingRE = regexp.MustCompile(`msg=serving grpc=(\S+)`)

// startDaemon starts `cyxwiz-node serve -c cfg` and connects to it once it
// reports its address. Its log is shown if the test fails.
func startDaemon(t *testing.T, bin, cfg string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(bin, "serve", "-c", cfg), exited: make(chan struct{})}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.log = append(d.log, line)
			d.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				addr <- m[1]
			}
		}
		d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			d.mu.Lock()
			t.Logf("daemon pid %d log:\n%s", d.cmd.Process.Pid, strings.Join(d.log, "\n"))
			d.mu.Unlock()
		}
	})
	select {
	case a := <-addr:
		d.conn, err = grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
	case <-d.exited:
		t.Fatal("daemon exited before serving")
	case <-time.After(crashWait):
		t.Fatal("daemon did not report its address")
	}
	t.Cleanup(func() { d.conn.Close() })
	d.deployments = cyxwizpb.NewDeploymentServiceClient(d.conn)
	d.infer = inference.NewGRPCInferenceServiceClient(d.conn)
	return d
}

// logged reports whether a line of the daemon's log so far contains s.
func (d *daemon) logged(s string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.ContainsFunc(d.log, func(l string) bool { return strings.Contains(l, s) })
}

// kill sends SIGKILL and waits for the process to be gone; killing it again
// is fine.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil && err != os.ErrProcessDone {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(crashWait):
		t.Fatal("daemon survived SIGKILL")
	}
	d.conn.Close()
}

// term sends SIGTERM, as systemd or an operator stops a node, and waits
// for the graceful stop to end.
func (d *daemon) term(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(crashWait):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	d.conn.Close()
}

// waitStalled waits until srv holds a stalled download (of what).
func waitStalled(t *testing.T, srv *artifacttest.Server, what string) {
	t.Helper()
	select {
	case <-srv.Stalled:
	case <-time.After(crashWait):
		t.Fatalf("the download of %s did not start", what)
	}
}

func (d *daemon) assign(t *testing.T, m crashModel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	resp, err := d.deployments.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{
		DeploymentId: m.id,
		Spec: &cyxwizpb.DeploymentSpec{ModelName: m.name, Format: "onnx",
			Model: &cyxwizpb.Artifact{Uri: m.uri, Sha256: m.sha256, SizeBytes: int64(len(m.data))}},
	})
	if err != nil {
		t.Fatalf("assign %s: %v", m.id, err)
	}
	if resp.Status.DeploymentId != m.id {
		t.Fatalf("assign %s: status of %q", m.id, resp.Status.DeploymentId)
	}
}

// watch opens WatchDeployments for id; stop ends it.
func (d *daemon) watch(t *testing.T, id string) (cyxwizpb.DeploymentService_WatchDeploymentsClient, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	w, err := d.deployments.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: []string{id}, Snapshot: true})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return w, cancel
}

// waitServing follows id over WatchDeployments until it is Ready or Running.
func (d *daemon) waitServing(t *testing.T, id string) {
	t.Helper()
	w, stop := d.watch(t, id)
	defer stop()
	var last *cyxwizpb.DeploymentStatus
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("%s: not serving (last status %v): %v", id, last, err)
		}
		last = ev.Status
		switch last.State {
		case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING:
			return
		case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED:
			t.Fatalf("%s: %v: %s", id, last.State, last.Message)
		}
	}
}

// check asks the deployment's status and runs one inference through KServe.
func (d *daemon) check(t *testing.T, m crashModel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	st, err := d.deployments.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: m.id})
	if err != nil {
		t.Fatalf("status %s: %v", m.id, err)
	}
	if s := st.Status.State; s != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY && s != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING {
		t.Errorf("%s is %v", m.id, s)
	}
	if sp := st.Status.Spec; sp.ModelName != m.name || sp.Model.Sha256 != m.sha256 {
		t.Errorf("%s: spec %s %s", m.id, sp.ModelName, sp.Model.Sha256)
	}
	resp, err := d.infer.ModelInfer(ctx, &inference.ModelInferRequest{
		ModelName:        m.name,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, int64(len(m.x))}}},
		RawInputContents: [][]byte{f32bytes(m.x)},
	})
	if err != nil {
		t.Fatalf("infer %s: %v", m.id, err)
	}
	if got := bytesF32(resp.RawOutputContents[0]); !slices.Equal(got, m.want) {
		t.Errorf("infer %s: Y = %v…, want %v…", m.id, head(got), head(m.want))
	}
}

func head(v []float32) []float32 { return v[:min(len(v), 4)] }

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func bytesF32(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}
