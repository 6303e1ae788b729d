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
	register("metadata", command{
		synopsis: "MODEL [--version V]",
		summary:  "print a model's platform, inputs and outputs",
		about: `The tensors are what clients send and get: for a deployment with guests,
what its preprocess and postprocess (or format) guests declare; none listed
when they declare nothing. -1 is a dimension of any size.`,
		minArgs: 1, maxArgs: 1,
		run: runMetadata,
	})
}

func runMetadata(ctx context.Context, c *client, args []string) error {
	fs := newFlagSet("metadata")
	version := fs.String("version", "", "model `version`")
	pos, err := parseArgs(c, fs, args)
	if err != nil {
		return err
	}
	md, err := inference.NewGRPCInferenceServiceClient(c.conn).ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: pos[0], Version: *version})
	if err != nil {
		return err
	}
	// The platform on a line of its own: "(versions 1, onnxruntime_onnx)"
	// read as two versions.
	fmt.Fprintf(c.out, "model:    %s (versions: %s)\nplatform: %s\n", printable(md.Name), printable(strings.Join(md.Versions, ", ")), printable(md.Platform))
	for _, side := range []struct {
		label string
		list  []*inference.ModelMetadataResponse_TensorMetadata
	}{{"input", md.Inputs}, {"output", md.Outputs}} {
		if len(side.list) == 0 {
			fmt.Fprintf(c.out, "%-9s (not declared)\n", side.label+"s:")
		}
		for _, t := range side.list {
			fmt.Fprintf(c.out, "%-9s %s %s %v\n", side.label+":", printable(t.Name), printable(t.Datatype), t.Shape)
		}
	}
	return nil
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
	fmt.Fprintln(c.out, printable(line))
	return nil
}
