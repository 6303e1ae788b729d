package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// The stand-ins below answer for services whose feature is not built yet:
// UNIMPLEMENTED with a sentence saying so, never a pretend success.

type unimplementedDeployments struct {
	cyxwizpb.UnimplementedDeploymentServiceServer
}

const deploymentsTODO = "deployments from the Central Server are not built yet on this node; declare models in node.toml [[models]]"

func (unimplementedDeployments) AssignDeployment(context.Context, *cyxwizpb.AssignDeploymentRequest) (*cyxwizpb.AssignDeploymentResponse, error) {
	return nil, status.Error(codes.Unimplemented, deploymentsTODO)
}

func (unimplementedDeployments) GetDeploymentStatus(context.Context, *cyxwizpb.GetDeploymentStatusRequest) (*cyxwizpb.GetDeploymentStatusResponse, error) {
	return nil, status.Error(codes.Unimplemented, deploymentsTODO)
}

func (unimplementedDeployments) ListDeployments(context.Context, *cyxwizpb.ListDeploymentsRequest) (*cyxwizpb.ListDeploymentsResponse, error) {
	return nil, status.Error(codes.Unimplemented, deploymentsTODO)
}

func (unimplementedDeployments) StopDeployment(context.Context, *cyxwizpb.StopDeploymentRequest) (*cyxwizpb.StopDeploymentResponse, error) {
	return nil, status.Error(codes.Unimplemented, deploymentsTODO)
}

func (unimplementedDeployments) WatchDeployments(*cyxwizpb.WatchDeploymentsRequest, grpc.ServerStreamingServer[cyxwizpb.DeploymentEvent]) error {
	return status.Error(codes.Unimplemented, deploymentsTODO)
}

type unimplementedInference struct {
	inference.UnimplementedGRPCInferenceServiceServer
}

func (unimplementedInference) ServerLive(context.Context, *inference.ServerLiveRequest) (*inference.ServerLiveResponse, error) {
	return &inference.ServerLiveResponse{Live: true}, nil
}

func (unimplementedInference) ServerReady(context.Context, *inference.ServerReadyRequest) (*inference.ServerReadyResponse, error) {
	return &inference.ServerReadyResponse{Ready: true}, nil
}

func (unimplementedInference) ServerMetadata(context.Context, *inference.ServerMetadataRequest) (*inference.ServerMetadataResponse, error) {
	return &inference.ServerMetadataResponse{Name: "cyxwiz-node", Version: Version}, nil
}

func (unimplementedInference) ModelReady(context.Context, *inference.ModelReadyRequest) (*inference.ModelReadyResponse, error) {
	return nil, status.Error(codes.Unimplemented, "model serving is not enabled on this node")
}

func (unimplementedInference) ModelMetadata(context.Context, *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	return nil, status.Error(codes.Unimplemented, "model serving is not enabled on this node")
}

func (unimplementedInference) ModelInfer(context.Context, *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	return nil, status.Error(codes.Unimplemented, "model serving is not enabled on this node")
}

type unimplementedTerminal struct {
	cyxwizpb.UnimplementedTerminalServiceServer
}

const terminalTODO = "terminal sessions are not built yet on this node"

func (unimplementedTerminal) StreamTerminal(grpc.BidiStreamingServer[cyxwizpb.TerminalData, cyxwizpb.TerminalData]) error {
	return status.Error(codes.Unimplemented, terminalTODO)
}

func (unimplementedTerminal) ResizeTerminal(context.Context, *cyxwizpb.TerminalResize) (*cyxwizpb.SimpleResponse, error) {
	return nil, status.Error(codes.Unimplemented, terminalTODO)
}

type unimplementedGenerate struct {
	cyxwizpb.UnimplementedGenerateServiceServer
}

func (unimplementedGenerate) Generate(*cyxwizpb.GenerateRequest, grpc.ServerStreamingServer[cyxwizpb.GenerateResponse]) error {
	return status.Error(codes.Unimplemented, "streaming text generation (GGUF LLMs) is not built yet on this node")
}
