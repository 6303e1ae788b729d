package main

import (
	"context"
	"fmt"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

func init() {
	register("health", "check that the node is serving", func(ctx context.Context, c *client, _ []string) error {
		resp, err := healthpb.NewHealthClient(c.conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.out, resp.Status)
		return nil
	})
	register("info", "print the node's name, version and protocol extensions", func(ctx context.Context, c *client, _ []string) error {
		md, err := inference.NewGRPCInferenceServiceClient(c.conn).ServerMetadata(ctx, &inference.ServerMetadataRequest{})
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "%s %s %s\n", md.Name, md.Version, joinNonEmpty(",", md.Extensions...))
		return nil
	})
}
