package server

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// randSpec is a valid spec with every field set, as a Central Server that
// sends every field does: random values within the node's limits, maps
// with empty keys, repeated fields with duplicates.
func randSpec(r *rand.Rand, uri string) *cyxwizpb.DeploymentSpec {
	digest := fileDigest(uri)
	if r.IntN(2) == 0 {
		digest = strings.ToUpper(digest)
	}
	str := func() string {
		const chars = "abcXYZ09 -_/é日"
		rs := []rune(chars)
		n := r.IntN(6)
		var b strings.Builder
		for range n {
			b.WriteRune(rs[r.IntN(len(rs))])
		}
		return b.String()
	}
	strs := func() map[string]string {
		m := map[string]string{}
		for range r.IntN(4) {
			m[str()] = str()
		}
		return m
	}
	p := &cyxwizpb.DeploymentSpec{
		ModelName: "m" + str(), ModelVersion: str(), Format: []string{"slow", "SLOW", "Slow"}[r.IntN(3)],
		Model:  &cyxwizpb.Artifact{Uri: uri, Sha256: digest, SizeBytes: r.Int64N(1 << 40)},
		Config: strs(), LoaderOptions: strs(),
		Resources: &cyxwizpb.ResourceRequest{MemoryBytes: r.Uint64N(1 << 62), CpuThreads: r.Uint32N(1025),
			GpuMemoryBytes: r.Uint64N(1 << 62)},
	}
	for range r.IntN(4) {
		p.AllowedDeployments = append(p.AllowedDeployments, []string{"a", "b", ""}[r.IntN(3)])
		p.Resources.Providers = append(p.Resources.Providers, []string{"cpu", "cuda", "tensorrt"}[r.IntN(3)])
	}
	mbs := 2 + r.Uint32N(1<<16-1)
	p.Batching = &cyxwizpb.BatchingConfig{MaxBatchSize: mbs, MaxQueueDelayUs: 1 + r.Uint64N(uint64(time.Hour/time.Microsecond)),
		QueueCapacity: 1 + r.Uint32N(1<<20), Instances: 1 + r.Uint32N(1024)}
	for range r.IntN(4) {
		p.Batching.PreferredBatchSizes = append(p.Batching.PreferredBatchSizes, 1+r.Uint32N(mbs))
	}
	roles := []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS, cyxwizpb.GuestRole_GUEST_ROLE_POSTPROCESS,
		cyxwizpb.GuestRole_GUEST_ROLE_BATCH_POLICY, cyxwizpb.GuestRole_GUEST_ROLE_FORMAT}
	r.Shuffle(len(roles), func(i, j int) { roles[i], roles[j] = roles[j], roles[i] })
	for i := 0; len(roles) > 0 && r.IntN(3) > 0; i++ {
		n := 1 + r.IntN(len(roles))
		g := &cyxwizpb.GuestModule{Name: "g" + string(rune('0'+i)) + str(), Artifact: &cyxwizpb.Artifact{Uri: uri, Sha256: digest, SizeBytes: r.Int64N(1 << 30)},
			Roles: roles[:n], MemoryLimitPages: r.Uint32N(1 << 16), Instances: r.Uint32N(257)}
		roles = roles[n:]
		if r.IntN(2) == 0 {
			g.CallTimeout = durationpb.New(1 + time.Duration(r.Int64N(int64(1000*time.Hour))))
		}
		p.Guests = append(p.Guests, g)
	}
	return p
}

// A spec assigned over gRPC is reported back by GetDeploymentStatus as it
// was sent, but for the format's case (the node names loaders in lower
// case), digests (lower case) and an empty version (version "1").
func TestSpecRoundTripOverGRPC(t *testing.T) {
	_, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range 200 {
		sent := randSpec(r, uri)
		id := "rt-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		sent.ModelName += id // one deployment serves a name
		if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: sent}); err != nil {
			t.Fatalf("seed %d: assign %v: %v", seed, sent, err)
		}
		got, err := c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: id})
		if err != nil {
			t.Fatal(err)
		}
		want := proto.Clone(sent).(*cyxwizpb.DeploymentSpec)
		want.Format = strings.ToLower(want.Format)
		if want.ModelVersion == "" {
			want.ModelVersion = "1"
		}
		want.Model.Sha256 = strings.ToLower(want.Model.Sha256)
		for _, g := range want.Guests {
			g.Artifact.Sha256 = strings.ToLower(g.Artifact.Sha256)
		}
		if !proto.Equal(got.Status.Spec, want) {
			t.Fatalf("seed %d: spec sent\n%v\ncame back\n%v", seed, want, got.Status.Spec)
		}
		// The same spec again is the same deployment.
		if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: sent}); err != nil {
			t.Fatalf("seed %d: assign again: %v", seed, err)
		}
	}
}

// A byte count of resources past int64, or a guest call_timeout past what
// a time.Duration holds (a valid Duration reaches 10,000 years), is
// refused: the node clamped them and reported back, as the deployment's
// spec, values other than those assigned.
func TestSpecOutOfRangeRefused(t *testing.T) {
	_, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	guest := func(d *durationpb.Duration) *cyxwizpb.GuestModule {
		return &cyxwizpb.GuestModule{Name: "g", Artifact: &cyxwizpb.Artifact{Uri: uri, Sha256: fileDigest(uri)},
			Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}, CallTimeout: d}
	}
	for name, f := range map[string]func(*cyxwizpb.DeploymentSpec){
		"memory":     func(p *cyxwizpb.DeploymentSpec) { p.Resources = &cyxwizpb.ResourceRequest{MemoryBytes: 1<<63 + 5} },
		"gpu-memory": func(p *cyxwizpb.DeploymentSpec) { p.Resources = &cyxwizpb.ResourceRequest{GpuMemoryBytes: 1<<64 - 1} },
		"timeout-300y": func(p *cyxwizpb.DeploymentSpec) {
			p.Guests = append(p.Guests, guest(&durationpb.Duration{Seconds: 300 * 365 * 86400}))
		},
		"timeout-edge": func(p *cyxwizpb.DeploymentSpec) {
			p.Guests = append(p.Guests, guest(&durationpb.Duration{Seconds: 9223372036, Nanos: 854775808}))
		},
	} {
		p := apiSpec(uri)
		p.ModelName = name
		f(p)
		_, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: name, Spec: p})
		if status.Code(err) != codes.InvalidArgument {
			got, _ := c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: name})
			t.Errorf("%s: %v, want INVALID_ARGUMENT (spec came back as %v)", name, err, got.GetStatus().GetSpec())
		}
	}
	// The largest in range are taken, and come back as sent.
	p := apiSpec(uri)
	p.Resources = &cyxwizpb.ResourceRequest{MemoryBytes: 1<<63 - 1, GpuMemoryBytes: 1<<63 - 1}
	p.Guests = append(p.Guests, guest(&durationpb.Duration{Seconds: 9223372036, Nanos: 854775807}))
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "max", Spec: p}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "max"})
	if err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(p).(*cyxwizpb.DeploymentSpec)
	want.ModelVersion = "1"
	want.Batching = &cyxwizpb.BatchingConfig{}
	if !proto.Equal(got.Status.Spec, want) {
		t.Fatalf("spec sent\n%v\ncame back\n%v", want, got.Status.Spec)
	}
}
