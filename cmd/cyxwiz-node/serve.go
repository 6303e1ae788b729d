package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/server"
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
	reg := newRegistry(cfg)
	for _, f := range reg.Formats() {
		if !f.Available {
			log.Debug("model format unavailable", "format", f.Format, "reason", f.Reason)
		}
	}
	models := deploy.NewManager(reg, log)
	srv, err := server.New(cfg, server.Services{
		Inference: server.NewInference(models),
		Ready:     func() bool { return server.Ready(models) },
	}, log)
	if err != nil {
		return fmt.Errorf("%w: %w", errStartup, err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error {
		deployStatic(gctx, cfg, models, log)
		return nil
	})
	err = g.Wait()

	stopCtx, cancel := context.WithTimeout(context.Background(), cfg.Limits.ShutdownTimeout.D())
	defer cancel()
	if cerr := models.Close(stopCtx); cerr != nil {
		log.Warn("stopping deployments", "err", cerr)
	}
	return err
}

// deployStatic loads the operator's [[models]]. A model that fails is logged
// and left Failed; the others serve.
func deployStatic(ctx context.Context, cfg *config.Config, models *deploy.Manager, log *slog.Logger) {
	for _, m := range cfg.Models {
		b := cfg.BatchingFor(m)
		spec := deploy.Spec{
			ID: m.Name, Name: m.Name, Version: m.Version, Format: m.Format, Path: m.Path, Owner: "operator",
			Batching: engine.Config{
				MaxBatchSize:        b.MaxBatchSize,
				PreferredBatchSizes: b.PreferredBatchSizes,
				MaxQueueDelay:       time.Duration(b.MaxQueueDelayUS) * time.Microsecond,
				QueueCapacity:       b.QueueCapacity,
				Instances:           b.Instances,
			},
			Load: loaders.Options{
				IntraOpThreads: cfg.Inference.IntraOpThreads,
				InterOpThreads: cfg.Inference.InterOpThreads,
				Providers:      cfg.ProvidersFor(m),
				Logger:         log.With("model", m.Name),
			},
		}
		if _, err := models.Deploy(ctx, spec); err != nil {
			log.Error("static model not served", "model", m.Name, "err", err)
		}
	}
}
