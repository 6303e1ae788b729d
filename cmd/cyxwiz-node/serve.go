package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/cpulatency"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/host/server"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
)

// newRegistry lists every model format this build knows, loadable or not.
func newRegistry(cfg *config.Config) *loaders.Registry {
	return loaders.NewRegistry(
		onnx.New(onnx.Config{LibraryPath: cfg.Native.ONNXRuntime}),
		loaders.Unsupported{Name: "gguf", Reason: "the llama.cpp loader is not built yet"},
		loaders.Unsupported{Name: "safetensors", Reason: "no native SafeTensors runtime: serve it through a FORMAT guest"},
		loaders.Unsupported{Name: "pytorch", Reason: "no libtorch is available on this node"},
		loaders.Unsupported{Name: "tensorflow", Reason: "no TensorFlow runtime is available on this node"},
	)
}

// serve wires the node's parts and runs them until ctx ends.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	for _, dir := range []string{cfg.Storage.StateDir, cfg.Storage.CacheDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("%w: %w", errStartup, err)
		}
	}
	// The store's lock comes first: a second node on the same state
	// directory stops here, before it writes a node id or tidies the
	// artifact cache the first one is using.
	st, err := store.Open(filepath.Join(cfg.Storage.StateDir, "deployments.db"))
	if err != nil {
		return fmt.Errorf("%w: %w", errStartup, err)
	}
	defer st.Close()
	id, err := nodeID(cfg.Node.ID, cfg.Storage.StateDir)
	if err != nil {
		return fmt.Errorf("%w: %w", errStartup, err)
	}
	log.Info("node", "id", id, "name", cfg.Node.Name)
	if cfg.Central.Address != "" {
		log.Warn("central.address is set, but the Central Server link is not built yet: running standalone", "address", cfg.Central.Address)
	}
	cache, err := artifact.New(filepath.Join(cfg.Storage.CacheDir, "artifacts"), int64(cfg.Storage.CacheMaxSize), log.With("component", "artifacts"))
	if err != nil {
		return fmt.Errorf("%w: %w", errStartup, err)
	}
	defer cache.Close()

	guests, err := guest.NewRuntime(ctx, guest.Config{
		CacheDir:         filepath.Join(cfg.Storage.CacheDir, "wasm"),
		CacheMaxBytes:    int64(cfg.Guests.CacheMaxSize),
		MemoryLimitPages: uint32(cfg.Guests.MemoryLimitPages),
		CallTimeout:      cfg.Guests.CallTimeout.D(),
		MaxOutputBytes:   uint32(cfg.Guests.MaxOutputSize), // at most config.MaxGuestOutputSize
	}, log.With("component", "guests"))
	if err != nil {
		return fmt.Errorf("%w: %w", errStartup, err)
	}
	defer guests.Close(context.Background())

	reg := newRegistry(cfg)
	for _, f := range reg.Formats() {
		if !f.Available {
			log.Debug("model format unavailable", "format", f.Format, "reason", f.Reason)
		}
	}
	models := deploy.NewManager(deploy.Config{
		MaxDeployments:       cfg.Limits.MaxDeployments,
		KeepStopped:          cfg.Limits.KeepStopped,
		MemoryBudget:         int64(cfg.Limits.MemoryBudget),
		MaxArtifactSize:      int64(cfg.Limits.MaxArtifactSize),
		MaxConcurrentFetches: cfg.Limits.MaxConcurrentFetches,
		MaxConcurrentLoads:   cfg.Limits.MaxConcurrentLoads,
		DrainTimeout:         cfg.Limits.ShutdownTimeout.D(),
		FetchTimeout:         cfg.Limits.FetchTimeout.D(),
		Batching:             engineBatching(cfg.Inference.Batching),
		Load: loaders.Options{
			IntraOpThreads: cfg.Inference.IntraOpThreads,
			InterOpThreads: cfg.Inference.InterOpThreads,
			Providers:      cfg.Inference.Providers,
		},
		Guests:            guests,
		GuestInstances:    cfg.Guests.Instances,
		AllowPreciseClock: cfg.Guests.AllowPreciseClock,
	}, reg, cache, st, log)
	// stopDeployments ends what the deployments started, the cache first:
	// downloads cut short by the cache closing keep their partial files and
	// resume after the restart; cut short by their deployments stopping,
	// they would be thrown away.
	stopDeployments := func(ctx context.Context) error {
		cache.Close()
		return models.Close(ctx)
	}

	svc := server.Services{
		Deployments: server.NewDeployments(models),
		Inference:   server.NewInference(models).LimitInflight(int64(cfg.Limits.MaxInflightBytes)),
		Ready:       func() bool { return server.Ready(models) },
		Draining:    models.StopWatches,
	}
	var latency *cpulatency.Governor
	if limit := cfg.Inference.CPULatency; limit != nil {
		req, err := cpulatency.Open(cpulatency.DefaultPath)
		if err != nil {
			log.Warn("inference.cpu_latency not applied: idle CPUs keep their sleep states", "err", err)
		} else {
			defer req.Close()
			latency = cpulatency.NewGovernor(req, limit.D(), cfg.Inference.CPULatencyHold.D(), log.With("component", "cpulatency"))
			svc.Busy = latency.Touch
			log.Info("cpu latency limit held while requests arrive", "limit", limit.D(), "hold", cfg.Inference.CPULatencyHold.D())
		}
	}
	// The listeners are bound before any deployment starts: a port in use
	// fails the start before static models load and restored downloads
	// begin (and are then cut short).
	srv, err := server.New(cfg, svc, log)
	if err != nil {
		models.Close(context.Background()) // nothing started: returns at once
		return fmt.Errorf("%w: %w", errStartup, err)
	}
	if ctx.Err() != nil {
		// Stopped during start-up (SIGTERM while the store lock or the
		// guest runtime was awaited): start no deployment, whose model
		// load the stop would then have to wait for.
		log.Info("stopped during start-up")
		models.Close(context.Background()) // nothing started: returns at once
		srv.Close()
		return nil
	}
	deployStatic(cfg, models, log)
	if err := models.Restore(); err != nil {
		stopDeployments(context.Background()) // the static models are loading
		srv.Close()
		return fmt.Errorf("%w: %w", errStartup, err)
	}

	g, gctx := errgroup.WithContext(ctx)
	// The stop has one limit, shutdown_timeout from the moment it starts,
	// for the calls' drain and the deployments' together (each waiting the
	// whole timeout in turn took twice as long). gctx ends with the stop,
	// at the latest when Wait returns.
	stopping := make(chan time.Time, 1)
	defer context.AfterFunc(gctx, func() {
		stopping <- time.Now()
		// Requests waiting for company (a queue delay, a preferred batch
		// size) run now: one waiting out a delay longer than the drain
		// would fail unrun.
		models.Flush()
	})()
	g.Go(func() error { return srv.Run(gctx) })
	if latency != nil {
		g.Go(func() error { return latency.Run(gctx) })
	}
	served := make(chan error, 1)
	go func() { served <- g.Wait() }() // left to end on its own if given up on below
	var stopAt time.Time
	select {
	case err = <-served:
		stopAt = <-stopping
	case stopAt = <-stopping:
		// The servers drain for shutdown_timeout, then cancel what is left
		// and give it serverGrace. A stop that takes longer is not waited
		// for: gRPC's Stop waits for connections still in their handshake,
		// and one that never sent a byte held the exit for two minutes.
		wait := time.NewTimer(time.Until(stopAt.Add(cfg.Limits.ShutdownTimeout.D() + serverGrace)))
		defer wait.Stop()
		select {
		case err = <-served:
		case <-wait.C:
			log.Warn("the gRPC and HTTP servers did not stop in time; exiting without them")
		}
	}

	deadline := stopAt.Add(cfg.Limits.ShutdownTimeout.D())
	if least := time.Now().Add(closeGrace); deadline.Before(least) {
		deadline = least // the calls' drain took it all: close what is idle
	}
	stopCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if cerr := stopDeployments(stopCtx); cerr != nil {
		log.Warn("stopping deployments", "err", cerr)
	}
	return err
}

// closeGrace is the least time the deployments get to close when the
// calls' drain has used the whole shutdown_timeout: enough for those with
// nothing running (without it, the node reported giving up on every one).
const closeGrace = 200 * time.Millisecond

// serverGrace is how long past shutdown_timeout the node waits for its
// servers to stop: server.Run gives calls that ignore their cancellation a
// second.
const serverGrace = time.Second + 100*time.Millisecond

// deployStatic assigns the operator's [[models]]; they load in the
// background like any deployment. A model that fails is left Failed with its
// reason; the others serve.
func deployStatic(cfg *config.Config, models *deploy.Manager, log *slog.Logger) {
	for _, m := range cfg.Models {
		b := cfg.BatchingFor(m)
		spec := deploy.Spec{
			Name: m.Name, Version: m.Version, Format: m.Format, Config: m.Config,
			Model:     artifact.Artifact{URI: (&url.URL{Scheme: "file", Path: m.Path}).String()},
			Batching:  engineBatching(b),
			Resources: deploy.Resources{Providers: cfg.ProvidersFor(m)},
		}
		if _, err := models.Assign(m.Name, spec, deploy.OwnerOperator); err != nil {
			log.Error("static model not served", "model", m.Name, "err", err)
		}
	}
}

// engineBatching is a node.toml batching table as the engine takes it.
func engineBatching(b config.Batching) engine.Config {
	return engine.Config{
		MaxBatchSize:        b.MaxBatchSize,
		PreferredBatchSizes: b.PreferredBatchSizes,
		MaxQueueDelay:       time.Duration(b.MaxQueueDelayUS) * time.Microsecond,
		QueueCapacity:       b.QueueCapacity,
		Instances:           b.Instances,
	}
}
