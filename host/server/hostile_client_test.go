package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// HTTP/2 frame types and flags the raw client uses.
const (
	h2Data     = 0x0
	h2Headers  = 0x1
	h2RST      = 0x3
	h2Settings = 0x4
	h2Ping     = 0x6
	h2GoAway   = 0x7

	h2Ack        = 0x1
	h2EndHeaders = 0x4
)

// rawH2 is a minimal HTTP/2 client writing frames on a raw TCP connection,
// for what a well-behaved client library never does. Its reader acknowledges
// the server's SETTINGS, counts RST_STREAMs and reports PING acks.
type rawH2 struct {
	conn    net.Conn
	resets  atomic.Int64
	goAway  atomic.Value // string: the payload of a GOAWAY
	pingAck chan struct{}
	done    chan struct{}
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawH2{conn: conn, pingAck: make(chan struct{}, 1), done: make(chan struct{})}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.frame(t, h2Settings, 0, 0, nil)
	// The reader writes too (SETTINGS acks): only after the preface.
	go c.read()
	t.Cleanup(func() { conn.Close(); <-c.done })
	return c
}

func (c *rawH2) read() {
	defer close(c.done)
	var h [9]byte
	for {
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			return
		}
		n := int64(h[0])<<16 | int64(h[1])<<8 | int64(h[2])
		p := make([]byte, n)
		if _, err := io.ReadFull(c.conn, p); err != nil {
			return
		}
		switch typ, flags := h[3], h[4]; {
		case typ == h2GoAway:
			c.goAway.Store(string(p))
		case typ == h2Settings && flags&h2Ack == 0:
			c.write(h2Settings, h2Ack, 0, nil)
		case typ == h2Ping && flags&h2Ack != 0:
			select {
			case c.pingAck <- struct{}{}:
			default:
			}
		case typ == h2RST:
			c.resets.Add(1)
		}
	}
}

func (c *rawH2) write(typ, flags byte, stream uint32, payload []byte) error {
	b := make([]byte, 9, 9+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	binary.BigEndian.PutUint32(b[5:], stream)
	_, err := c.conn.Write(append(b, payload...))
	return err
}

func (c *rawH2) frame(t *testing.T, typ, flags byte, stream uint32, payload []byte) {
	t.Helper()
	if err := c.write(typ, flags, stream, payload); err != nil {
		t.Fatal(err)
	}
}

// sync returns once the server has read everything written before it: it
// answers a PING after the frames ahead of it.
func (c *rawH2) sync(t *testing.T) {
	t.Helper()
	c.frame(t, h2Ping, 0, 0, make([]byte, 8))
	select {
	case <-c.pingAck:
	case <-c.done:
		t.Fatalf("connection closed by the server (GOAWAY %q)", c.goAway.Load())
	case <-time.After(10 * time.Second):
		t.Fatal("no PING ack from the server")
	}
}

// hpackInt appends an HPACK integer with an n-bit prefix.
func hpackInt(b []byte, first byte, n uint, v int) []byte {
	max := 1<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	v -= max
	for ; v >= 128; v /= 128 {
		b = append(b, byte(v%128+128))
	}
	return append(b, byte(v))
}

// hpackField appends a literal header field: incrementally indexed (added
// to the decoder's dynamic table) or not.
func hpackField(b []byte, indexed bool, name, value string) []byte {
	if indexed {
		b = append(b, 0x40)
	} else {
		b = append(b, 0)
	}
	b = hpackInt(b, 0, 7, len(name))
	b = append(b, name...)
	b = hpackInt(b, 0, 7, len(value))
	return append(b, value...)
}

// grpcHeaders is the header block of a gRPC call of method.
func grpcHeaders(method string) []byte {
	var b []byte
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
		{":authority", "node"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		b = hpackField(b, false, f[0], f[1])
	}
	return b
}

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// A call's metadata is bounded: a client that put one 4 KiB "-bin" header
// in the HPACK table and referenced it thousands of times (a byte each)
// made the server decode ~11 MiB of values per call, held as long as the
// call, and a call whose message never comes lasts for good: a few KiB
// sent pinned hundreds of MiB.
func TestStalledCallsMetadataBounded(t *testing.T) {
	srv, conn, _ := startServer(t, testConfig(t), Services{})
	// A call with a few KiB of metadata (a token, say) is served.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", strings.Repeat("t", 8<<10))
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a call with 8 KiB of metadata: %v", err)
	}
	before := heapInuse()
	c := dialRawH2(t, srv.GRPCAddr().String())
	value := base64.RawStdEncoding.EncodeToString([]byte(strings.Repeat("x", 2900)))
	const calls, refs = 16, 3900
	for i := range calls {
		hdr := grpcHeaders("/grpc.health.v1.Health/Check")
		if i == 0 {
			hdr = hpackField(hdr, true, "x-bin", value) // dynamic table entry 62
		}
		for range refs {
			hdr = append(hdr, 0x80|62) // indexed field: entry 62
		}
		// Headers only: the request message never comes.
		c.frame(t, h2Headers, h2EndHeaders, uint32(2*i+1), hdr)
	}
	c.sync(t)
	held := int64(heapInuse()) - int64(before)
	t.Logf("%d stalled calls: heap +%d KiB, %d refused", calls, held>>10, c.resets.Load())
	if held > 32<<20 {
		t.Errorf("%d stalled calls, %d KiB of headers sent, hold %d MiB of the server's heap", calls, calls*refs>>10, held>>20)
	}
}

// A connection that never sends the HTTP/2 preface is closed after
// handshakeTimeout, not gRPC's 120 s.
func TestPrefacelessConnectionClosed(t *testing.T) {
	defer func(d time.Duration) { handshakeTimeout = d }(handshakeTimeout)
	handshakeTimeout = 200 * time.Millisecond
	srv, _, _ := startServer(t, testConfig(t), Services{})
	conn, err := net.Dial("tcp", srv.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil { // the server's SETTINGS, then EOF
		t.Fatalf("silent connection: %v, want it closed by the server", err)
	}
}

// blackHole is a TCP proxy that can stop forwarding in both directions
// while keeping both connections open: a NAT that dropped the mapping, or
// a peer that hung.
type blackHole struct {
	lis    net.Listener
	target string
	frozen chan struct{}
	freeze sync.Once
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newBlackHole(t *testing.T, target string) *blackHole {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackHole{lis: lis, target: target, frozen: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *blackHole) accept() {
	defer p.wg.Done()
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

// pipe copies src to dst until frozen; what it reads after is dropped,
// and it stops reading.
func (p *blackHole) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.frozen:
			return
		default:
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *blackHole) stop() { p.freeze.Do(func() { close(p.frozen) }) }

func (p *blackHole) close() {
	p.stop()
	p.lis.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// heldModel's runs last until their context ends.
type heldModel struct {
	entered, cancelled chan struct{}
}

func (m *heldModel) Info() loaders.Info {
	spec := []loaders.TensorSpec{{Name: "x", DType: tensor.FP32, Shape: []int64{-1, 2}}}
	return loaders.Info{Format: "held", Platform: "test", Inputs: spec, Outputs: spec}
}

func (m *heldModel) Infer(ctx context.Context, _ []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	close(m.entered)
	<-ctx.Done()
	close(m.cancelled)
	return nil, ctx.Err()
}

func (m *heldModel) Close() error { return nil }

type heldLoader struct{ m *heldModel }

// heldDeployment serves a heldModel as the deployment "held".
func heldDeployment(t *testing.T) (*heldModel, *deploy.Manager) {
	t.Helper()
	m := &heldModel{entered: make(chan struct{}), cancelled: make(chan struct{})}
	models := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(heldLoader{m}), nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
	})
	spec := deploy.Spec{Name: "held", Format: "held", Model: artifact.Artifact{URI: "file:///mem"},
		Batching: engine.Config{MaxBatchSize: 1, Instances: 1, QueueCapacity: 4}}
	if _, err := models.Assign("held", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if st, err := models.WaitFor(wctx, "held", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %v", err, st.State)
	}
	return m, models
}

func (heldLoader) Format() string   { return "held" }
func (heldLoader) Available() error { return nil }
func (l heldLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return l.m, nil
}

// A ModelInfer whose client vanished (the connection black-holed: no FIN,
// no RST) is cancelled, its model run with it, once the server's keepalive
// ping goes unanswered; with gRPC's default the first ping came after 2 h,
// and the call, its run and the connection were held until then.
func TestDeadPeerCallCancelled(t *testing.T) {
	defer func(t, to time.Duration) { keepaliveTime, keepaliveTimeout = t, to }(keepaliveTime, keepaliveTimeout)
	keepaliveTime, keepaliveTimeout = 200*time.Millisecond, 200*time.Millisecond
	m, models := heldDeployment(t)
	srv, _, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	proxy := newBlackHole(t, srv.GRPCAddr().String())
	conn, err := grpc.NewClient(proxy.lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	called := make(chan error, 1)
	go func() {
		_, err := inference.NewGRPCInferenceServiceClient(conn).ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "held",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}}},
			RawInputContents: [][]byte{f32raw(1, 2)}})
		called <- err
	}()
	select {
	case <-m.entered:
	case err := <-called:
		t.Fatalf("call ended before its model ran: %v", err)
	}
	defer func() { conn.Close(); <-called }()
	proxy.stop()
	select {
	case <-m.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the model run of a client that vanished was still running 10 s later")
	}
}

// A request declaring a body it never sends is answered and its connection
// closed after httpReadTimeout: net/http reads a small unread body before
// it answers, and without a read deadline the client got no answer and the
// connection was held for good (and held every drain for the whole
// shutdown timeout).
func TestHTTPBodyNeverSent(t *testing.T) {
	defer func(d time.Duration) { httpReadTimeout = d }(httpReadTimeout)
	httpReadTimeout = 200 * time.Millisecond
	srv, _, _ := startServer(t, testConfig(t), Services{})
	conn, err := net.Dial("tcp", srv.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /healthz HTTP/1.1\r\nHost: node\r\nContent-Length: 1000\r\n\r\npart"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("/healthz with a body that never comes: %v, want an answer", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", res.Status)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answer: read %v, want EOF (closed by the server)", err)
	}
}

// A call whose request never arrives whole (half a message, then nothing,
// on a live connection) ends after receiveTimeout and lets go of
// what came: the server held it for good, uncounted by max_inflight_bytes.
// A call whose handler runs longer than that is not cut.
func TestHalfSentRequestDropped(t *testing.T) {
	defer func(d time.Duration) { receiveTimeout = d }(receiveTimeout)
	receiveTimeout = 300 * time.Millisecond
	srv, _, _ := startServer(t, testConfig(t), Services{})
	c := dialRawH2(t, srv.GRPCAddr().String())
	c.frame(t, h2Headers, h2EndHeaders, 1, grpcHeaders("/inference.GRPCInferenceService/ModelInfer"))
	msg := make([]byte, 5+8<<10) // a gRPC message of 1 MiB, 8 KiB of it sent
	binary.BigEndian.PutUint32(msg[1:5], 1<<20)
	c.frame(t, h2Data, 0, 1, msg)
	c.sync(t)
	deadline := time.After(20 * time.Second)
	for c.resets.Load() == 0 {
		select {
		case <-deadline:
			t.Fatal("the half-sent call is still open")
		case <-c.done:
			t.Fatalf("connection closed (GOAWAY %q) instead of the call", c.goAway.Load())
		case <-time.After(10 * time.Millisecond):
		}
	}
	// A call whose handler runs past receiveTimeout is not cut.
	m, models := heldDeployment(t)
	_, conn2, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	ctx, cancel := context.WithCancel(context.Background())
	called := make(chan error, 1)
	go func() {
		_, err := inference.NewGRPCInferenceServiceClient(conn2).ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "held",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}}},
			RawInputContents: [][]byte{f32raw(1, 2)}})
		called <- err
	}()
	select {
	case <-m.entered:
	case err := <-called:
		t.Fatalf("call ended before its model ran: %v", err)
	}
	select {
	case <-m.cancelled:
		t.Fatal("a running call was cancelled by the receive timeout")
	case <-time.After(3 * receiveTimeout):
	}
	cancel()
	if err := <-called; status.Code(err) != codes.Canceled {
		t.Fatalf("the call: %v, want CANCELLED by its client", err)
	}
	// Nor a stream that lasts (its handler reads its own messages).
	wctx2, wcancel2 := context.WithCancel(context.Background())
	defer wcancel2()
	w, err := healthpb.NewHealthClient(conn2).Watch(wctx2, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { _, err := w.Recv(); ended <- err }()
	select {
	case err := <-ended:
		t.Fatalf("a watch ended (%v) by the receive timeout", err)
	case <-time.After(3 * receiveTimeout):
	}
	wcancel2()
	<-ended
}

// "0.0.0.0" is every IPv4 address, not every address: Go's "tcp" listener
// for it took IPv6 connections too ([::1] answered), past a firewall
// written for IPv4.
func TestIPv4AnyIsIPv4Only(t *testing.T) {
	cfg, err := config.Parse("[listen]\ngrpc = \"0.0.0.0:0\"\nhttp = \"0.0.0.0:0\"\n", t.TempDir(), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _ := startServer(t, cfg, Services{})
	for _, a := range []net.Addr{srv.GRPCAddr(), srv.HTTPAddr()} {
		port := a.(*net.TCPAddr).Port
		c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("IPv4 loopback: %v", err)
		}
		c.Close()
		l6, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback here, so no IPv6 connection to take: %v", err)
		}
		l6.Close()
		if c, err := net.Dial("tcp6", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
			c.Close()
			t.Errorf("listening on 0.0.0.0, the node took a connection on [::1]:%d", port)
		}
	}
}

// A connection to the HTTP listener that sends nothing does not hold the
// stop: net/http's Shutdown waited 5 s for it.
func TestSilentHTTPConnectionDoesNotHoldStop(t *testing.T) {
	cfg, err := config.Parse("[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[limits]\nshutdown_timeout = \"30s\"\n", t.TempDir(), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	srv, _, stop := startServer(t, cfg, Services{})
	c, err := net.Dial("tcp", srv.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stop took %v with one silent HTTP connection and nothing in flight", d)
	}
}
