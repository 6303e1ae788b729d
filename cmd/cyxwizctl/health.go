package main

import (
	"context"
	"fmt"
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

func init() {
	register("health", command{
		summary: "check that the node is serving",
		about:   "It prints the node's health status and exits 0 for SERVING, 1 otherwise.",
		run:     runHealth,
	})
	register("info", command{summary: "print the server's name, version and KServe protocol extensions", run: runInfo})
}

func runHealth(ctx context.Context, c *client, args []string) error {
	if _, err := parseArgs(c, newFlagSet("health"), args); err != nil {
		return err
	}
	resp, err := healthpb.NewHealthClient(c.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	fmt.Fprintln(c.out, resp.Status)
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("the node is %s", resp.Status)
	}
	return nil
}

func runInfo(ctx context.Context, c *client, args []string) error {
	if _, err := parseArgs(c, newFlagSet("info"), args); err != nil {
		return err
	}
	md, err := inference.NewGRPCInferenceServiceClient(c.conn).ServerMetadata(ctx, &inference.ServerMetadataRequest{})
	if err != nil {
		return err
	}
	line := md.Name + " " + md.Version
	if len(md.Extensions) > 0 {
		line += " (extensions: " + strings.Join(md.Extensions, ", ") + ")"
	}
	fmt.Fprintln(c.out, line)
	return nil
}
