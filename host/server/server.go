// Package server is the node's network face: one gRPC server carrying the
// DeploymentService, the KServe v2 GRPCInferenceService, grpc.health.v1 and
// server reflection (the TerminalService and GenerateService answer
// UNIMPLEMENTED until they are built), plus a small HTTP server for
// /healthz, /readyz and the handlers in Services.HTTP (the daemon mounts
// none yet: /metrics comes with the metrics part). It turns Go errors into
// gRPC status codes in one place (errors.go) and owns the servers'
// lifecycle: Run serves until its context ends, then drains in-flight calls
// for at most the shutdown timeout.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/cyxwiz/cyxwiz-node/host/config"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// HTTP/2 flow-control windows and socket buffers sized for tensor traffic.
const (
	windowSize = 4 << 20
	// maxStreams bounds the concurrent calls of one connection (HTTP/2
	// SETTINGS_MAX_CONCURRENT_STREAMS; Go's own HTTP/2 server takes 250).
	maxStreams     = 256
	connWindowSize = 32 << 20
	bufferSize     = 256 << 10
)

// maxHeaderListSize bounds the header list of a call (HTTP/2
// SETTINGS_MAX_HEADER_LIST_SIZE, counted as HPACK does: name, value and 32
// bytes a field).
const maxHeaderListSize = 16 << 10

// Keepalive and handshake timing (variables for tests): a connection the
// server has read nothing from for keepaliveTime is pinged, and closed when
// the ping is not answered within keepaliveTimeout; one that has not sent
// the HTTP/2 preface within handshakeTimeout is closed.
var (
	keepaliveTime    = time.Minute
	keepaliveTimeout = 20 * time.Second
	handshakeTimeout = 10 * time.Second
	// receiveTimeout bounds how long a unary call's request may take to
	// arrive whole (see receiveDeadline).
	receiveTimeout = 2 * time.Minute
)

// receiveTimer is the context key of a call's receive timer.
type receiveTimer struct{}

// receiveDeadline is the server's tap: each call's context is cancelled
// if its handler has not started receiveTimeout after the call began. gRPC
// reads a unary call's whole request before its handler runs, and holds
// what came so far (up to listen.max_message_size, and uncounted by
// limits.max_inflight_bytes): a client that sent half a request and then
// nothing, answering pings, held it for good. The interceptors stop the
// timer as the handler starts (a stream's handler reads its messages
// itself, for as long as the stream lasts).
func receiveDeadline(ctx context.Context, info *tap.Info) (context.Context, error) {
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(receiveTimeout, cancel)
	if info.FullMethodName != inference.GRPCInferenceService_ModelInfer_FullMethodName {
		// A call that ends before its handler (a malformed request, an
		// unknown method) frees its timer as gRPC cancels its context.
		// Not ModelInfer's: its handler stops the timer first thing
		// (modelInferHandler), and this costs a goroutine per call.
		context.AfterFunc(ctx, func() { t.Stop() })
	}
	return context.WithValue(ctx, receiveTimer{}, t), nil
}

// received stops ctx's receive timer: the call's handler has started.
func received(ctx context.Context) {
	if t, ok := ctx.Value(receiveTimer{}).(*time.Timer); ok {
		t.Stop()
	}
}

// Version is the node's version, set by the linker in release builds.
var Version = "0.1.0-dev"

// Services are the implementations the server registers. A nil field is
// served by a stand-in that answers UNIMPLEMENTED with a sentence saying so.
type Services struct {
	Deployments cyxwizpb.DeploymentServiceServer
	Inference   inference.GRPCInferenceServiceServer
	Terminal    cyxwizpb.TerminalServiceServer
	Generate    cyxwizpb.GenerateServiceServer
	// HTTP handlers mounted next to /healthz and /readyz (e.g. "/metrics").
	HTTP map[string]http.Handler
	// Ready reports whether the node is ready to serve: /readyz, and the
	// health service's status for ReadinessService (its status for "" is
	// liveness: SERVING until the drain starts). nil means always ready
	// once serving.
	Ready func() bool
	// Draining, if not nil, is called when the server starts to drain, to
	// end calls that would otherwise last until the drain times out (watch
	// streams).
	Draining func()
	// Busy, if not nil, is called as each gRPC call starts: the node is
	// serving traffic (cpulatency.Governor.Touch).
	Busy func()
}

// Server is the node's gRPC and HTTP servers.
type Server struct {
	cfg      *config.Config
	log      *slog.Logger
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server
	grpcLis  net.Listener
	httpLis  net.Listener
	ready    func() bool
	draining func()
	// drain ends when the drain starts: health watches end with it.
	drain    context.Context
	endWatch context.CancelFunc
	shutdown time.Duration
}

// New builds the servers and binds their listeners, so that a port already in
// use is reported before anything else starts. A New that fails leaves
// nothing running; the gRPC server's workers it starts end when Run returns.
func New(cfg *config.Config, svc Services, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, ready: svc.Ready, shutdown: cfg.Limits.ShutdownTimeout.D()}
	if s.ready == nil {
		s.ready = func() bool { return true }
	}
	s.draining = svc.Draining
	s.drain, s.endWatch = context.WithCancel(context.Background())
	// Bind first: grpc.NewServer starts its stream workers at once, and only
	// Stop ends them, so a failure after it would leave them running.
	var err error
	if s.grpcLis, err = net.Listen(network(cfg.Listen.GRPC), cfg.Listen.GRPC); err != nil {
		return nil, fmt.Errorf("listen grpc %s: %w", cfg.Listen.GRPC, err)
	}
	if cfg.Listen.HTTP != "" {
		if s.httpLis, err = net.Listen(network(cfg.Listen.HTTP), cfg.Listen.HTTP); err != nil {
			s.grpcLis.Close()
			return nil, fmt.Errorf("listen http %s: %w", cfg.Listen.HTTP, err)
		}
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(int(cfg.Listen.MaxMessageSize)),
		grpc.MaxSendMsgSize(int(cfg.Listen.MaxMessageSize)),
		// Tensors are large messages: windows much larger than the 64 KiB
		// default let a request arrive without waiting for WINDOW_UPDATEs.
		grpc.InitialWindowSize(windowSize),
		grpc.InitialConnWindowSize(connWindowSize),
		grpc.ReadBufferSize(bufferSize),
		grpc.WriteBufferSize(bufferSize),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// The server pings a connection it has heard nothing from and
		// closes it when the ping goes unanswered, cancelling its calls:
		// with gRPC's default (a ping after 2 h) a client behind a NAT
		// that dropped the connection, or one that stopped reading, held
		// its calls, their queue slots and the connection for hours.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		// A connection that has not sent the HTTP/2 preface within this
		// is closed (gRPC's default is 120 s, a file descriptor and a
		// goroutine each for anyone who opens connections and says
		// nothing).
		grpc.ConnectionTimeout(handshakeTimeout),
		// The metadata of a call is held as long as the call: under
		// gRPC's default (16 MiB a call) a client referencing one
		// 4 KiB "-bin" header thousands of times from the HPACK table
		// made each call of a connection hold ~11 MiB of decoded values
		// for 4 KiB sent, and a stalled call held them for good: 1 MiB
		// sent pinned GiBs. 16 KiB is gRPC core's hard limit.
		grpc.MaxHeaderListSize(maxHeaderListSize),
		// Streams buffer up to a window each before their handler reads
		// them: unbounded, one connection could make the node hold
		// windowSize times any number of streams. Clients queue the rest.
		grpc.MaxConcurrentStreams(maxStreams),
		// Reused handler goroutines keep their grown stacks: a new
		// goroutine per call regrows (copies) its stack on every request.
		// Enough for many concurrent calls per core (calls block in models).
		grpc.NumStreamWorkers(uint32(16 * runtime.GOMAXPROCS(0))),
		experimental.BufferPool(buffers),
		grpc.ForceServerCodecV2(newWireCodec(buffers)),
		grpc.InTapHandle(receiveDeadline),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			received(ctx)
			return h(ctx, req)
		}, unaryErrors(log)),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			received(ss.Context())
			return h(srv, ss)
		}, streamErrors(log)),
	}
	if busy := svc.Busy; busy != nil {
		opts = append(opts,
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				busy()
				return h(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				busy()
				return h(srv, ss)
			}))
	}
	s.grpc = grpc.NewServer(opts...)
	if svc.Deployments == nil {
		svc.Deployments = unimplementedDeployments{}
	}
	if svc.Inference == nil {
		svc.Inference = unimplementedInference{}
	}
	if svc.Terminal == nil {
		svc.Terminal = unimplementedTerminal{}
	}
	if svc.Generate == nil {
		svc.Generate = unimplementedGenerate{}
	}
	// Every service is registered with checkedDecode: a request that does
	// not decode is InvalidArgument (reflection's streams get it from the
	// stream interceptor).
	s.grpc.RegisterService(checkedDecode(&cyxwizpb.DeploymentService_ServiceDesc), svc.Deployments)
	if inf, ok := svc.Inference.(*Inference); ok {
		s.grpc.RegisterService(inferenceDesc(), inf) // the zero-copy ModelInfer
	} else {
		s.grpc.RegisterService(checkedDecode(&inference.GRPCInferenceService_ServiceDesc), svc.Inference)
	}
	s.grpc.RegisterService(checkedDecode(&cyxwizpb.TerminalService_ServiceDesc), svc.Terminal)
	s.grpc.RegisterService(checkedDecode(&cyxwizpb.GenerateService_ServiceDesc), svc.Generate)
	s.health = health.NewServer()
	s.grpc.RegisterService(checkedDecode(&healthpb.Health_ServiceDesc), healthService{s.health, s.drain})
	reflection.Register(s.grpc)

	if cfg.Listen.HTTP != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if !s.ready() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		for path, h := range svc.HTTP {
			mux.Handle(path, h)
		}
		// Idle keep-alive connections are closed: a client leaving
		// thousands open held the node's file descriptors for good. A
		// request's body gets httpReadTimeout too: net/http reads a small
		// body the handler left unread before it answers, and a client
		// that declared one and sent none held its connection (and every
		// drain, for the whole shutdown timeout) for good.
		s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: httpReadTimeout, IdleTimeout: httpIdleTimeout, WriteTimeout: 10 * time.Second}
	}
	return s, nil
}

// httpIdleTimeout is how long the HTTP listener keeps an idle keep-alive
// connection (a variable for tests).
var httpIdleTimeout = time.Minute

// httpDrain bounds the HTTP listener's drain.
const httpDrain = 500 * time.Millisecond

// httpReadTimeout bounds the reading of a whole HTTP request, body
// included (a variable for tests).
var httpReadTimeout = 10 * time.Second

// network is the network to listen on addr: "tcp4" for an IPv4 address.
// Go listens on "0.0.0.0" with an IPv6 socket that takes IPv4 too, so the
// node answered on every IPv6 address as well, past a firewall written for
// IPv4 only. "[::]" (and ":port") still mean both.
func network(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
			return "tcp4"
		}
	}
	return "tcp"
}

// GRPCAddr is the address the gRPC server listens on (useful with port 0).
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// HTTPAddr is the HTTP listener's address, or nil when HTTP is disabled.
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLis == nil {
		return nil
	}
	return s.httpLis.Addr()
}

// Run serves until ctx ends, then stops taking new calls, marks the health
// service NOT_SERVING, and drains in-flight calls for at most the configured
// shutdown timeout before closing the rest. It returns nil on a clean stop.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	ready := s.ready()
	s.health.SetServingStatus(ReadinessService, servingStatus(ready))
	g.Go(func() error {
		// The readiness status follows Ready (a Watch sees each change).
		t := time.NewTicker(readinessPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if now := s.ready(); now != ready {
					ready = now
					s.health.SetServingStatus(ReadinessService, servingStatus(ready))
				}
			}
		}
	})
	g.Go(func() error {
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve grpc: %w", err)
		}
		return nil
	})
	if s.http != nil {
		g.Go(func() error {
			if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve http: %w", err)
			}
			return nil
		})
	}
	httpAddr := "off"
	if a := s.HTTPAddr(); a != nil {
		httpAddr = a.String()
	}
	s.log.Info("serving", "grpc", s.GRPCAddr().String(), "http", httpAddr)
	g.Go(func() error {
		<-ctx.Done()
		s.stop()
		return nil
	})
	return g.Wait()
}

// healthService is grpc-go's health server whose Watch streams end when the
// drain starts (UNAVAILABLE, after NOT_SERVING where the stream takes it):
// they last as long as their client otherwise, and an idle one held every
// graceful stop for the whole shutdown timeout.
type healthService struct {
	*health.Server
	drain context.Context
}

func (h healthService) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	defer context.AfterFunc(h.drain, cancel)()
	err := h.Server.Watch(req, watchStream{stream, ctx})
	if h.drain.Err() != nil && stream.Context().Err() == nil {
		return status.Error(codes.Unavailable, "node is shutting down")
	}
	return err
}

// watchStream is a health watch's stream under a context that the drain
// ends.
type watchStream struct {
	grpc.ServerStreamingServer[healthpb.HealthCheckResponse]
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }

// ReadinessService is the grpc.health.v1 service name whose status is the
// node's readiness (Services.Ready, as /readyz and KServe's ServerReady):
// NOT_SERVING while a deployment is on its way to serving. The empty name
// is liveness, SERVING from start until the drain, as a Kubernetes
// liveness probe wants it.
const ReadinessService = "inference.GRPCInferenceService"

// readinessPoll is how often Run looks at Services.Ready for the health
// service.
const readinessPoll = 100 * time.Millisecond

func servingStatus(ok bool) healthpb.HealthCheckResponse_ServingStatus {
	if ok {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

// Close releases a server that will not Run (a start-up that failed after
// New): its listeners and gRPC's stream workers. Nothing is logged: it
// never served.
func (s *Server) Close() {
	s.endWatch()
	s.grpc.Stop()
	s.grpcLis.Close()
	if s.httpLis != nil {
		s.httpLis.Close()
	}
}

// stop drains gRPC and HTTP within the shutdown timeout, then forces.
func (s *Server) stop() {
	s.log.Info("stopping: draining in-flight calls", "timeout", s.shutdown)
	s.health.Shutdown()
	s.endWatch()
	if s.draining != nil {
		s.draining()
	}
	deadline, cancel := context.WithTimeout(context.Background(), s.shutdown)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.grpc.GracefulStop()
	}()
	if s.http != nil {
		// Its requests take microseconds; Shutdown waits up to 5 s for a
		// connection that has sent nothing yet (net/http's rule).
		hctx, hcancel := context.WithTimeout(deadline, httpDrain)
		if err := s.http.Shutdown(hctx); err != nil {
			s.http.Close()
		}
		hcancel()
	}
	select {
	case <-done:
	case <-deadline.Done():
		s.log.Warn("drain timed out; cancelling remaining calls")
		s.grpc.Stop()
		// Stop cancels every call's context; a handler that ignores it
		// would hold GracefulStop forever, so give up waiting after a
		// moment rather than hang the node's exit.
		select {
		case <-done:
		case <-time.After(time.Second):
			s.log.Error("a call ignored cancellation; exiting without it")
		}
	}
}
