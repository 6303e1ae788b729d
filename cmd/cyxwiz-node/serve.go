package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/server"
)

// serve wires the node's parts and runs them until ctx ends.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	srv, err := server.New(cfg, server.Services{}, log)
	if err != nil {
		return fmt.Errorf("%w: %w", errStartup, err)
	}
	return srv.Run(ctx)
}
