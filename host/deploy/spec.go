package deploy

import (
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// Spec is everything needed to serve one model: what the Central Server
// sends in AssignDeployment, or what the operator declares in node.toml.
type Spec struct {
	Name    string `json:"name"` // model name clients use
	Version string `json:"version"`
	Format  string `json:"format"`
	// Model is the model file (file://, http://, https://).
	Model              artifact.Artifact `json:"model"`
	Guests             []Guest           `json:"guests,omitempty"`
	Batching           engine.Config     `json:"batching"`
	Resources          Resources         `json:"resources"`
	Config             map[string]string `json:"config,omitempty"`
	AllowedDeployments []string          `json:"allowed_deployments,omitempty"`
	LoaderOptions      map[string]string `json:"loader_options,omitempty"`
}

// Guest is a WebAssembly guest module of a deployment.
type Guest struct {
	Name             string            `json:"name"`
	Artifact         artifact.Artifact `json:"artifact"`
	Roles            []string          `json:"roles"` // "preprocess", "postprocess", "batch_policy", "format"
	MemoryLimitPages uint32            `json:"memory_limit_pages,omitempty"`
	CallTimeout      time.Duration     `json:"call_timeout,omitempty"`
	Instances        int               `json:"instances,omitempty"`
	// PreciseClock grants the host's clocks at full resolution (else 1 ms).
	PreciseClock bool `json:"precise_clock,omitempty"`
}

// Resources is what a deployment asks of the node.
type Resources struct {
	MemoryBytes    int64    `json:"memory_bytes,omitempty"`
	CPUThreads     int      `json:"cpu_threads,omitempty"`
	GPUCount       int      `json:"gpu_count,omitempty"`
	GPUMemoryBytes int64    `json:"gpu_memory_bytes,omitempty"`
	Providers      []string `json:"providers,omitempty"`
}

// maxCPUThreads bounds resources.cpu_threads, as node.toml bounds its
// thread counts (config.MaxThreads).
const maxCPUThreads = 1024

// GuestRoles are the roles a guest may take.
var GuestRoles = []string{"preprocess", "postprocess", "batch_policy", "format"}

// Equal reports whether two specs ask for the same deployment.
func (s Spec) Equal(o Spec) bool { return reflect.DeepEqual(s.normal(), o.normal()) }

// normal fills defaults so that equal intents compare equal.
func (s Spec) normal() Spec {
	if s.Version == "" {
		s.Version = "1"
	}
	s.Format = strings.ToLower(s.Format)
	s.Model.SHA256 = strings.ToLower(s.Model.SHA256)
	s.Guests = slices.Clone(s.Guests) // s is a copy; its guests must be too
	for i := range s.Guests {
		s.Guests[i].Artifact.SHA256 = strings.ToLower(s.Guests[i].Artifact.SHA256)
	}
	if len(s.Config) == 0 {
		s.Config = nil
	}
	if len(s.LoaderOptions) == 0 {
		s.LoaderOptions = nil
	}
	return s
}

// validate checks a spec before anything is stored: every problem is named.
// known reports whether a format exists.
func (s Spec) validate(known func(string) bool, limits Config) error {
	var p []string
	bad := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if s.Name == "" {
		bad("model_name is empty")
	}
	switch {
	case s.Format == "":
		bad("format is empty")
	case s.Format == FormatGuest:
		if !slices.ContainsFunc(s.Guests, func(g Guest) bool { return slices.Contains(g.Roles, "format") }) {
			bad("format %q needs a guest with the format role", FormatGuest)
		}
	case !known(s.Format):
		bad("unknown format %q", s.Format)
	}
	roles := map[string]string{}
	if err := checkArtifact("model", s.Model); err != nil {
		p = append(p, err.Error())
	}
	seen := map[string]bool{}
	for i, g := range s.Guests {
		key := fmt.Sprintf("guests[%d]", i)
		if g.Name == "" {
			bad("%s.name is empty", key)
		} else if g.Name == "model" {
			bad("%s.name %q is reserved for the model's own artifact", key, g.Name)
		} else if seen[g.Name] {
			bad("%s.name %q is used twice", key, g.Name)
		}
		seen[g.Name] = true
		if err := checkArtifact(key, g.Artifact); err != nil {
			p = append(p, err.Error())
		}
		if len(g.Roles) == 0 {
			bad("%s.roles is empty", key)
		}
		if g.PreciseClock && !limits.AllowPreciseClock {
			bad("%s.precise_clock: this node does not grant guests precise clocks (guests.allow_precise_clock)", key)
		}
		if g.Instances < 0 || g.Instances > guest.MaxInstances {
			bad("%s.instances is %d: want 0 (the node's guests.instances) to %d", key, g.Instances, guest.MaxInstances)
		}
		if g.CallTimeout < 0 {
			bad("%s.call_timeout is negative (%v): want 0 (the node's guests.call_timeout) or more", key, g.CallTimeout)
		}
		if rt := limits.Guests; rt != nil && g.MemoryLimitPages > rt.MemoryLimitPages() {
			bad("%s.memory_limit_pages is %d: this node lets a guest have at most %d pages (guests.memory_limit_pages)", key, g.MemoryLimitPages, rt.MemoryLimitPages())
		}
		for _, r := range g.Roles {
			if !slices.Contains(GuestRoles, r) {
				bad("%s: unknown role %q", key, r)
			} else if other, dup := roles[r]; dup && other == g.Name {
				bad("%s: role %q is listed twice", key, r)
			} else if dup {
				bad("%s: role %q is already taken by guest %q", key, r, other)
			}
			roles[r] = g.Name
		}
	}
	if err := s.Batching.Validate(); err != nil {
		bad("batching: %v", err)
	}
	r := s.Resources
	if r.MemoryBytes < 0 || r.GPUMemoryBytes < 0 || r.CPUThreads < 0 || r.GPUCount < 0 {
		bad("resources: negative values")
	}
	if r.CPUThreads > maxCPUThreads {
		bad("resources.cpu_threads is %d: at most %d", r.CPUThreads, maxCPUThreads)
	}
	if limits.MemoryBudget > 0 && r.MemoryBytes > limits.MemoryBudget {
		bad("resources.memory_bytes %d exceeds the node's whole memory budget %d", r.MemoryBytes, limits.MemoryBudget)
	}
	if r.GPUCount > limits.GPUs {
		bad("resources.gpu_count %d: this node has %d GPU(s)", r.GPUCount, limits.GPUs)
	}
	if s.Model.Size > 0 && limits.MaxArtifactSize > 0 && s.Model.Size > limits.MaxArtifactSize {
		bad("model.size_bytes %d exceeds limits.max_artifact_size %d", s.Model.Size, limits.MaxArtifactSize)
	}
	for _, prov := range r.Providers {
		if !slices.Contains([]string{"cpu", "cuda", "tensorrt"}, prov) {
			bad("resources.providers: unknown provider %q", prov)
		}
	}
	if len(p) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, strings.Join(p, "; "))
	}
	return nil
}

func checkArtifact(key string, a artifact.Artifact) error {
	if a.URI == "" {
		return fmt.Errorf("%s.uri is empty", key)
	}
	u, err := artifact.ParseURI(a.URI)
	if err != nil {
		return fmt.Errorf("%s.uri: %w", key, err)
	}
	switch u.Scheme {
	case "file":
	case "http", "https":
		if a.SHA256 == "" {
			return fmt.Errorf("%s.sha256 is required for %s URIs", key, u.Scheme)
		}
	default:
		return fmt.Errorf("%s.uri: scheme %q not supported (file, http, https)", key, u.Scheme)
	}
	if a.SHA256 != "" {
		if b, err := hex.DecodeString(a.SHA256); err != nil || len(b) != 32 {
			return fmt.Errorf("%s.sha256 %q is not 64 hex digits", key, a.SHA256)
		}
	}
	if a.Size < 0 {
		return fmt.Errorf("%s.size_bytes is negative", key)
	}
	return nil
}
