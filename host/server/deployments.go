package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

func init() {
	registerCode(deploy.ErrInvalidSpec, codes.InvalidArgument)
	registerCode(deploy.ErrNoCapacity, codes.ResourceExhausted)
	registerCode(deploy.ErrClosed, codes.Unavailable)
	// A guest swap fetches while the caller waits: its artifact's errors
	// reach the client (a deployment's own fetch errors end in its state).
	registerCode(artifact.ErrInvalid, codes.InvalidArgument)
	registerCode(artifact.ErrNotFound, codes.FailedPrecondition)
	registerCode(artifact.ErrChecksum, codes.FailedPrecondition)
	registerCode(artifact.ErrTooLarge, codes.ResourceExhausted)
	registerCode(artifact.ErrFetch, codes.Unavailable)
	registerCode(artifact.ErrClosed, codes.Unavailable)
	registerCode(guest.ErrDeadline, codes.DeadlineExceeded)
	registerCode(guest.ErrMemory, codes.ResourceExhausted)
	registerCode(guest.ErrABI, codes.FailedPrecondition)
	registerCode(guest.ErrTrap, codes.Internal)
	registerCode(guest.ErrBadOutput, codes.Internal)
	registerCode(cyxwiz.ErrNotAllowed, codes.PermissionDenied)
}

// Deployments serves the DeploymentService over the deployment manager.
type Deployments struct {
	cyxwizpb.UnimplementedDeploymentServiceServer
	m *deploy.Manager
}

// NewDeployments returns the DeploymentService over m.
func NewDeployments(m *deploy.Manager) *Deployments { return &Deployments{m: m} }

// AssignDeployment accepts a deployment; work continues in the background.
func (s *Deployments) AssignDeployment(ctx context.Context, req *cyxwizpb.AssignDeploymentRequest) (*cyxwizpb.AssignDeploymentResponse, error) {
	if err := checkNewID(req.DeploymentId); err != nil {
		return nil, err
	}
	if req.Spec == nil {
		return nil, status.Error(codes.InvalidArgument, "spec is missing")
	}
	if err := checkName("spec.model_name", req.Spec.ModelName); err != nil {
		return nil, err
	}
	if err := checkName("spec.model_version", req.Spec.ModelVersion); err != nil {
		return nil, err
	}
	if n := proto.Size(req.Spec); n > maxSpecBytes {
		return nil, status.Errorf(codes.InvalidArgument, "spec is %d bytes: at most %d (config values and loader options are for settings, not data: ship data as an artifact)", n, maxSpecBytes)
	}
	for i, g := range req.Spec.Guests {
		// Carried in every status, list, watch and log line, as ids are.
		if err := checkName(fmt.Sprintf("spec.guests[%d].name", i), g.GetName()); err != nil {
			return nil, err
		}
	}
	if err := checkGuestTimeouts(req.Spec.Guests); err != nil {
		return nil, err
	}
	if err := checkResourceBytes(req.Spec.Resources); err != nil {
		return nil, err
	}
	spec := SpecFromProto(req.Spec)
	if err := checkFileDigests(spec); err != nil {
		return nil, err
	}
	// Batching left at zero takes node.toml's defaults in the node
	// (deploy.Status.Batching); the spec keeps the zeros as assigned.
	st, err := s.m.AssignContext(ctx, req.DeploymentId, spec, deploy.OwnerCentral)
	if err != nil {
		// A guest swap starts the new guests while the caller waits: one
		// that traps, overruns its time or memory, or answers badly as it
		// starts (its signature, say) is the caller's artifact failing,
		// not the node (INTERNAL, retry-worthy in most clients) nor the
		// call's own deadline (DEADLINE_EXCEEDED).
		if errors.Is(err, guest.ErrTrap) || errors.Is(err, guest.ErrBadOutput) || errors.Is(err, guest.ErrGuest) ||
			errors.Is(err, guest.ErrDeadline) || errors.Is(err, guest.ErrMemory) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, err
	}
	return &cyxwizpb.AssignDeploymentResponse{Status: StatusToProto(st)}, nil
}

// maxIDBytes bounds a new deployment's id. An id is the key of its record
// in the node's store (bbolt refuses keys over 32 KiB: the store's error
// came back as INTERNAL, quoting the whole id) and appears in every status,
// event and log line about the deployment.
const maxIDBytes = 512

// maxSpecBytes bounds a deployment's spec as encoded. Every status,
// event and list entry carries it, and the node keeps it in memory and in
// its store: specs of tens of megabytes (a config map used as a data
// channel) put ListDeployments and watch snapshots past the message limit
// for every caller.
const maxSpecBytes = 256 << 10

// checkNewID checks the id of a deployment being assigned: not empty (the
// manager says so too), at most maxIDBytes, and without control characters
// (a newline in an id forges lines in logs and in cyxwizctl's tables). The
// spec's model name and version are held to the same (checkName).
func checkNewID(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "deployment_id is empty")
	}
	return checkName("deployment_id", id)
}

// checkName checks a name that the node prints and quotes (an id, a model
// name or version): at most maxIDBytes, without control characters.
// Emptiness is for the caller to judge.
func checkName(field, v string) error {
	if len(v) > maxIDBytes {
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long (%q...): at most %d", field, len(v), v[:32], maxIDBytes)
	}
	for i, r := range v {
		if unicode.IsControl(r) {
			return status.Errorf(codes.InvalidArgument, "%s %q has a control character (%U) at byte %d", field, v, r, i)
		}
	}
	return nil
}

// checkID checks the id of an existing deployment named by a call: an
// empty one is a client's mistake, not a deployment that went away.
func checkID(field, id string) error {
	if id == "" {
		return status.Errorf(codes.InvalidArgument, "%s is empty", field)
	}
	return nil
}

// checkFileDigests refuses a file:// artifact without its SHA-256 in a
// spec assigned over gRPC. The node reads local files its callers may not
// (it runs as root on many machines), and a deployment can hand what it
// loads back (a format guest's error message, an output): with the digest
// required, a caller can load only a file whose contents it already knows.
// cyxwizctl deploy computes the digest of the local files it names.
// node.toml's [[models]], the operator's own, need none.
func checkFileDigests(spec deploy.Spec) error {
	check := func(field string, a artifact.Artifact) error {
		if a.SHA256 == "" && strings.HasPrefix(strings.ToLower(a.URI), "file:") {
			return status.Errorf(codes.InvalidArgument, "%s: a file:// artifact assigned over gRPC needs its sha256 (the node reads files its callers may not; cyxwizctl deploy computes it for local files)", field)
		}
		return nil
	}
	if err := check("spec.model", spec.Model); err != nil {
		return err
	}
	for i, g := range spec.Guests {
		if err := check(fmt.Sprintf("spec.guests[%d] (%s)", i, g.Name), g.Artifact); err != nil {
			return err
		}
	}
	return nil
}

// checkGuestTimeouts refuses a guest call_timeout that is not a valid
// duration or is negative, as StopDeployment does its drain_timeout: a
// negative one was taken silently as "the node's default", and one out of
// range saturated to no timeout at all.
func checkGuestTimeouts(guests []*cyxwizpb.GuestModule) error {
	for i, g := range guests {
		if g.GetCallTimeout() == nil {
			continue
		}
		if err := g.CallTimeout.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "guests[%d].call_timeout: %v", i, err)
		}
		if d := g.CallTimeout.AsDuration(); d < 0 {
			return status.Errorf(codes.InvalidArgument, "guests[%d].call_timeout %v is negative: leave it unset for the node's default", i, d)
		}
		// A valid Duration reaches 10,000 years; a time.Duration, 292: one
		// past it was saturated, and reported back as another timeout.
		if d := g.CallTimeout; d.Seconds > int64(math.MaxInt64/time.Second) ||
			d.Seconds == int64(math.MaxInt64/time.Second) && int64(d.Nanos) > int64(math.MaxInt64%time.Second) {
			return status.Errorf(codes.InvalidArgument, "guests[%d].call_timeout of %d s is out of range: at most %v (292 years)", i, d.Seconds, time.Duration(math.MaxInt64))
		}
	}
	return nil
}

// checkResourceBytes refuses a byte count of resources that does not fit
// the node's int64: it was clamped to MaxInt64, and the deployment's status
// reported another request than the one assigned.
func checkResourceBytes(r *cyxwizpb.ResourceRequest) error {
	for _, f := range []struct {
		name string
		v    uint64
	}{{"memory_bytes", r.GetMemoryBytes()}, {"gpu_memory_bytes", r.GetGpuMemoryBytes()}} {
		if f.v > math.MaxInt64 {
			return status.Errorf(codes.InvalidArgument, "resources.%s %d is out of range: at most %d", f.name, f.v, int64(math.MaxInt64))
		}
	}
	return nil
}

// GetDeploymentStatus reports one deployment.
func (s *Deployments) GetDeploymentStatus(_ context.Context, req *cyxwizpb.GetDeploymentStatusRequest) (*cyxwizpb.GetDeploymentStatusResponse, error) {
	if err := checkID("deployment_id", req.DeploymentId); err != nil {
		return nil, err
	}
	d, err := s.m.Get(req.DeploymentId)
	if err != nil {
		return nil, err
	}
	return &cyxwizpb.GetDeploymentStatusResponse{Status: StatusToProto(d.Status())}, nil
}

// ListDeployments lists deployments, filtered by state when asked. A
// filter naming no state (UNSPECIFIED, or a value this node does not know)
// is refused: it matched nothing, and the client took an empty list for
// "no such deployments".
func (s *Deployments) ListDeployments(_ context.Context, req *cyxwizpb.ListDeploymentsRequest) (*cyxwizpb.ListDeploymentsResponse, error) {
	want := map[cyxwizpb.DeploymentState]bool{}
	for i, st := range req.States {
		if _, known := cyxwizpb.DeploymentState_name[int32(st)]; !known || st == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_UNSPECIFIED {
			return nil, status.Errorf(codes.InvalidArgument, "states[%d]: %v is not a deployment state (want PENDING to FAILED; leave states empty to list every deployment)", i, st)
		}
		want[st] = true
	}
	resp := &cyxwizpb.ListDeploymentsResponse{}
	for _, d := range s.m.List() {
		p := StatusToProto(d.Status())
		if len(want) == 0 || want[p.State] {
			resp.Deployments = append(resp.Deployments, p)
		}
	}
	return resp, nil
}

// maxDrain bounds a stop's drain_timeout.
const maxDrain = time.Hour

// StopDeployment drains and unloads a deployment, for drain_timeout (when
// set) or the node's limits.shutdown_timeout, and at most as long as the
// call's own deadline.
func (s *Deployments) StopDeployment(ctx context.Context, req *cyxwizpb.StopDeploymentRequest) (*cyxwizpb.StopDeploymentResponse, error) {
	if err := checkID("deployment_id", req.DeploymentId); err != nil {
		return nil, err
	}
	var drain time.Duration
	if req.DrainTimeout != nil {
		if err := req.DrainTimeout.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "drain_timeout: %v", err)
		}
		drain = req.DrainTimeout.AsDuration()
		if drain < 0 || drain > maxDrain {
			return nil, status.Errorf(codes.InvalidArgument, "drain_timeout %v: want 0 (the node's default) to %v", drain, maxDrain)
		}
	}
	// node.toml's models are the operator's: a gRPC caller (the Central
	// Server, anyone who reaches the port) does not stop them.
	if d, err := s.m.Get(req.DeploymentId); err == nil && d.Status().Owner == deploy.OwnerOperator {
		return nil, status.Errorf(codes.FailedPrecondition, "deployment %q is declared in the node's node.toml ([[models]]): the operator stops it there (remove the entry, restart the node)", req.DeploymentId)
	}
	st, err := s.m.StopDrain(ctx, req.DeploymentId, drain)
	if err != nil {
		return nil, err
	}
	return &cyxwizpb.StopDeploymentResponse{Status: StatusToProto(st)}, nil
}

// maxWatchIDs bounds the deployments one watch names: its filter is kept
// for the stream's lifetime (11 million short ids, one 64 MiB request,
// held hundreds of megabytes).
const maxWatchIDs = 1 << 14

// WatchDeployments streams changes until the client goes away. The
// response headers go out as soon as the watch is registered: a client
// that waits for them (Header) misses no change made after, even without a
// snapshot and before any event.
func (s *Deployments) WatchDeployments(req *cyxwizpb.WatchDeploymentsRequest, stream grpc.ServerStreamingServer[cyxwizpb.DeploymentEvent]) error {
	if n := len(req.DeploymentIds); n > maxWatchIDs {
		return status.Errorf(codes.InvalidArgument, "deployment_ids names %d deployments: at most %d (leave it empty to watch every deployment)", n, maxWatchIDs)
	}
	for i, id := range req.DeploymentIds {
		if err := checkID(fmt.Sprintf("deployment_ids[%d]", i), id); err != nil {
			return err
		}
	}
	w := s.m.Watch(req.DeploymentIds, req.Snapshot)
	defer w.Close()
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		select {
		case e, ok := <-w.C:
			if !ok {
				if w.Overflowed() {
					return status.Error(codes.ResourceExhausted, "watcher fell too far behind; watch again with snapshot")
				}
				return status.Error(codes.Unavailable, "node is shutting down")
			}
			if err := stream.Send(&cyxwizpb.DeploymentEvent{Status: StatusToProto(e.Status), Snapshot: e.Snapshot}); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var roleNames = map[cyxwizpb.GuestRole]string{
	cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS:   "preprocess",
	cyxwizpb.GuestRole_GUEST_ROLE_POSTPROCESS:  "postprocess",
	cyxwizpb.GuestRole_GUEST_ROLE_BATCH_POLICY: "batch_policy",
	cyxwizpb.GuestRole_GUEST_ROLE_FORMAT:       "format",
}

// SpecFromProto converts the wire spec to the deployment spec.
func SpecFromProto(p *cyxwizpb.DeploymentSpec) deploy.Spec {
	s := deploy.Spec{
		Name: p.ModelName, Version: p.ModelVersion, Format: strings.ToLower(p.Format),
		Config: p.Config, AllowedDeployments: p.AllowedDeployments, LoaderOptions: p.LoaderOptions,
	}
	s.Model = artifactFromProto(p.Model)
	for _, g := range p.Guests {
		gs := deploy.Guest{Name: g.Name, Artifact: artifactFromProto(g.Artifact),
			MemoryLimitPages: g.MemoryLimitPages, Instances: int(g.Instances), PreciseClock: g.PreciseClock}
		if g.CallTimeout != nil {
			gs.CallTimeout = g.CallTimeout.AsDuration()
		}
		for _, r := range g.Roles {
			name, ok := roleNames[r]
			if !ok {
				name = r.String()
			}
			gs.Roles = append(gs.Roles, name)
		}
		s.Guests = append(s.Guests, gs)
	}
	if b := p.Batching; b != nil {
		s.Batching = engine.Config{MaxBatchSize: int(b.MaxBatchSize), MaxQueueDelay: micros(b.MaxQueueDelayUs),
			QueueCapacity: int(b.QueueCapacity), Instances: int(b.Instances)}
		for _, v := range b.PreferredBatchSizes {
			s.Batching.PreferredBatchSizes = append(s.Batching.PreferredBatchSizes, int(v))
		}
	}
	if r := p.Resources; r != nil {
		s.Resources = deploy.Resources{MemoryBytes: clampInt64(r.MemoryBytes), CPUThreads: int(r.CpuThreads),
			GPUCount: int(r.GpuCount), GPUMemoryBytes: clampInt64(r.GpuMemoryBytes), Providers: r.Providers}
	}
	return s
}

// micros converts microseconds from the wire; a value too large for a
// Duration saturates (and validation then refuses it as too large) rather
// than wrapping to something small.
func micros(us uint64) time.Duration {
	if us > uint64(math.MaxInt64/time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(us) * time.Microsecond
}

// clampInt64 converts a byte count from the wire without turning it
// negative.
func clampInt64(v uint64) int64 { return int64(min(v, math.MaxInt64)) }

func artifactFromProto(a *cyxwizpb.Artifact) artifact.Artifact {
	if a == nil {
		return artifact.Artifact{}
	}
	return artifact.Artifact{URI: a.Uri, SHA256: a.Sha256, Size: a.SizeBytes}
}

// SpecToProto converts a deployment spec to the wire form.
func SpecToProto(s deploy.Spec) *cyxwizpb.DeploymentSpec {
	p := &cyxwizpb.DeploymentSpec{ModelName: s.Name, ModelVersion: s.Version, Format: s.Format,
		Model:  &cyxwizpb.Artifact{Uri: s.Model.URI, Sha256: s.Model.SHA256, SizeBytes: s.Model.Size},
		Config: s.Config, AllowedDeployments: s.AllowedDeployments, LoaderOptions: s.LoaderOptions,
		Batching: &cyxwizpb.BatchingConfig{MaxBatchSize: uint32(s.Batching.MaxBatchSize),
			MaxQueueDelayUs: uint64(s.Batching.MaxQueueDelay / time.Microsecond),
			QueueCapacity:   uint32(s.Batching.QueueCapacity), Instances: uint32(s.Batching.Instances)},
		Resources: &cyxwizpb.ResourceRequest{MemoryBytes: uint64(s.Resources.MemoryBytes), CpuThreads: uint32(s.Resources.CPUThreads),
			GpuCount: uint32(s.Resources.GPUCount), GpuMemoryBytes: uint64(s.Resources.GPUMemoryBytes), Providers: s.Resources.Providers},
	}
	for _, v := range s.Batching.PreferredBatchSizes {
		p.Batching.PreferredBatchSizes = append(p.Batching.PreferredBatchSizes, uint32(v))
	}
	for _, g := range s.Guests {
		pg := &cyxwizpb.GuestModule{Name: g.Name, Artifact: &cyxwizpb.Artifact{Uri: g.Artifact.URI, Sha256: g.Artifact.SHA256, SizeBytes: g.Artifact.Size},
			MemoryLimitPages: g.MemoryLimitPages, Instances: uint32(g.Instances), PreciseClock: g.PreciseClock}
		if g.CallTimeout > 0 {
			pg.CallTimeout = durationpb.New(g.CallTimeout)
		}
		for _, r := range g.Roles {
			for k, v := range roleNames {
				if v == r {
					pg.Roles = append(pg.Roles, k)
				}
			}
		}
		p.Guests = append(p.Guests, pg)
	}
	return p
}

var stateToProto = map[deploy.State]cyxwizpb.DeploymentState{
	deploy.Pending:  cyxwizpb.DeploymentState_DEPLOYMENT_STATE_PENDING,
	deploy.Fetching: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FETCHING,
	deploy.Loading:  cyxwizpb.DeploymentState_DEPLOYMENT_STATE_LOADING,
	deploy.Ready:    cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY,
	deploy.Running:  cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING,
	deploy.Stopping: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPING,
	deploy.Stopped:  cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED,
	deploy.Failed:   cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED,
}

// StatusToProto converts a deployment status to the wire form. Its free
// text is made valid UTF-8: a message may quote bytes from anywhere (a
// path decoded from a file:// URI's %FF, a loader's or guest's error), and
// a proto3 string that is not UTF-8 fails to marshal: the status, the
// whole list and every watch carrying it failed with INTERNAL.
func StatusToProto(st deploy.Status) *cyxwizpb.DeploymentStatus {
	p := &cyxwizpb.DeploymentStatus{DeploymentId: validUTF8(st.ID), State: stateToProto[st.State], Message: validUTF8(st.Message),
		Spec: SpecToProto(st.Spec), Owner: validUTF8(st.Owner), MemoryBytes: uint64(max(st.MemoryBytes, 0))}
	if !st.Created.IsZero() {
		p.CreatedAt = timestamppb.New(st.Created)
	}
	if !st.Updated.IsZero() {
		p.UpdatedAt = timestamppb.New(st.Updated)
	}
	if st.Progress.Phase != "" {
		done, total := max(st.Progress.Done, 0), max(st.Progress.Total, 0)
		if total > 0 {
			done = min(done, total) // a body longer than declared is refused, not progress past 100 %
		}
		p.Progress = &cyxwizpb.Progress{Phase: validUTF8(st.Progress.Phase), DoneBytes: uint64(done), TotalBytes: uint64(total)}
	}
	return p
}

// validUTF8 is s with each run of invalid bytes replaced by U+FFFD (s
// itself, not a copy, when it is valid).
func validUTF8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
