// Package config reads and validates node.toml.
//
// Defaults are data: Load decodes the file over Default(), so every optional
// key has a value, and each field's comment names its default. Unknown keys,
// wrong types and bad values are errors that name the key (and the line, where
// the TOML decoder gives it). Relative paths are resolved against the folder
// that holds the config file. The daemon receives the validated Config and
// never re-reads the file.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"

	"github.com/cyxwiz/cyxwiz-node/host/engine"
)

// Config is the whole of node.toml.
type Config struct {
	Node      Node      `toml:"node"`
	Listen    Listen    `toml:"listen"`
	Central   Central   `toml:"central"`
	Storage   Storage   `toml:"storage"`
	Native    Native    `toml:"native"`
	Limits    Limits    `toml:"limits"`
	Inference Inference `toml:"inference"`
	Guests    Guests    `toml:"guests"`
	Terminal  Terminal  `toml:"terminal"`
	Metrics   Metrics   `toml:"metrics"`
	Log       Log       `toml:"log"`
	Models    []Model   `toml:"models"`
}

// Node identifies this node.
type Node struct {
	// ID is the node's identity towards the Central Server. Default: "" (a
	// random id is generated once and kept in storage.state_dir/node-id).
	ID string `toml:"id"`
	// Name is a human-readable name. Default: the host name.
	Name string `toml:"name"`
	// Labels are free-form key/values reported at registration.
	Labels map[string]string `toml:"labels"`
}

// Listen holds the addresses the node serves on.
type Listen struct {
	// GRPC serves every gRPC service. Default: "0.0.0.0:50052".
	GRPC string `toml:"grpc"`
	// HTTP serves /healthz and /readyz (/metrics once metrics are built); "" disables it. Default: "127.0.0.1:9090".
	HTTP string `toml:"http"`
	// MaxMessageSize bounds one gRPC message. Default: "64MiB".
	MaxMessageSize ByteSize `toml:"max_message_size"`
}

// Central is the link to the Central Server. It is not built yet: the
// keys are validated, then ignored (a non-empty Address is logged as such).
type Central struct {
	// Address of the Central Server's gRPC endpoint; "" runs standalone. Default: "".
	Address string `toml:"address"`
	// HeartbeatInterval between heartbeats. Default: "30s".
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	// ReportInterval between metric reports. Default: "10s".
	ReportInterval Duration `toml:"report_interval"`
	// Token is to authenticate the node to the Central Server and the
	// Central Server to the node's DeploymentService. Not enforced yet: the
	// gRPC services take calls from anyone who reaches listen.grpc.
	// Default: "".
	Token string `toml:"token"`
}

// Storage holds the node's folders.
type Storage struct {
	// StateDir holds the deployment database and the node id. Default: "var/state".
	StateDir string `toml:"state_dir"`
	// CacheDir holds fetched artifacts (by digest) and compiled guests. Default: "var/cache".
	CacheDir string `toml:"cache_dir"`
	// ModelDir is reserved for model files; nothing uses it yet. Default: "var/models".
	ModelDir string `toml:"model_dir"`
	// CacheMaxSize is the artifact cache budget; unused artifacts are evicted LRU. Default: "10GiB".
	CacheMaxSize ByteSize `toml:"cache_max_size"`
}

// Native locates the native runtime libraries that `make deps` fetches.
type Native struct {
	// ONNXRuntime is the path of libonnxruntime.so.1. Default: "lib/onnxruntime/libonnxruntime.so.1".
	ONNXRuntime string `toml:"onnxruntime"`
	// LlamaDir holds libllama.so and libggml*.so. Default: "lib/llama".
	LlamaDir string `toml:"llama_dir"`
}

// Limits bound what the node takes on.
type Limits struct {
	// MaxDeployments is the most deployments held at once. Default: 16.
	MaxDeployments int `toml:"max_deployments"`
	// KeepStopped is how many stopped or failed deployments the node
	// remembers (for status and list calls; a node.toml model's failure is
	// always kept); older ones are forgotten, oldest first.
	// Default: 256.
	KeepStopped int `toml:"keep_stopped"`
	// MaxInflightBytes bounds the bytes (as encoded, plus what typed
	// contents and BYTES elements take decoded) that the inference
	// requests being served hold together, queued or running; past it a
	// request is RESOURCE_EXHAUSTED. At least listen.max_message_size.
	// Default: "2GiB".
	MaxInflightBytes ByteSize `toml:"max_inflight_bytes"`
	// MemoryBudget is the memory all loaded models may hold together. Default: "8GiB".
	MemoryBudget ByteSize `toml:"memory_budget"`
	// MaxArtifactSize bounds one downloaded artifact. Default: "4GiB".
	MaxArtifactSize ByteSize `toml:"max_artifact_size"`
	// FetchTimeout bounds one artifact download. Default: "30m".
	FetchTimeout Duration `toml:"fetch_timeout"`
	// MaxConcurrentFetches bounds parallel downloads. Default: 2.
	MaxConcurrentFetches int `toml:"max_concurrent_fetches"`
	// MaxConcurrentLoads bounds parallel model loads. Default: 2.
	MaxConcurrentLoads int `toml:"max_concurrent_loads"`
	// ShutdownTimeout bounds the drain of in-flight calls on stop. Default: "5s".
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
}

// Inference holds the defaults for every deployment's runtime and batcher.
type Inference struct {
	// IntraOpThreads per model; 0 lets the runtime choose. Default: 1.
	IntraOpThreads int `toml:"intra_op_threads"`
	// InterOpThreads per model; 0 lets the runtime choose. Default: 1.
	InterOpThreads int `toml:"inter_op_threads"`
	// Providers in order of preference; one that cannot load falls back to
	// the next with a warning. Default: ["cpu"].
	Providers []string `toml:"providers"`
	// Batching defaults for deployments that do not set their own.
	Batching Batching `toml:"batching"`
	// CPULatency, when set, asks Linux to keep idle CPUs able to wake within
	// it while requests arrive (CPU latency QoS, /dev/cpu_dma_latency; needs
	// root). "0us" makes idle CPUs poll instead of sleeping: on a VM whose
	// idle vCPUs halt it cut about 100 µs off a round trip in bench-onnx, at
	// the price of idle CPU time while traffic lasts. Default: unset (off).
	CPULatency *Duration `toml:"cpu_latency"`
	// CPULatencyHold is how long CPULatency stays in force after the last
	// request (up to a quarter more). Default: "100ms".
	CPULatencyHold Duration `toml:"cpu_latency_hold"`
}

// Batching configures the dynamic batcher of one deployment.
type Batching struct {
	// MaxBatchSize is the most rows one execution takes; 0 or 1 disables batching. Default: 8.
	MaxBatchSize int `toml:"max_batch_size"`
	// PreferredBatchSizes dispatch a batch as soon as it reaches one. Default: [].
	PreferredBatchSizes []int `toml:"preferred_batch_sizes"`
	// MaxQueueDelayUS is how long (µs) the oldest request may wait for a batch to fill. Default: 0.
	MaxQueueDelayUS int `toml:"max_queue_delay_us"`
	// QueueCapacity bounds waiting requests; a full queue answers RESOURCE_EXHAUSTED. Default: 256.
	QueueCapacity int `toml:"queue_capacity"`
	// Instances is the number of concurrent executions. Default: 2.
	Instances int `toml:"instances"`
}

// Guests bounds the WebAssembly guest modules.
type Guests struct {
	// MemoryLimitPages caps a guest's linear memory in 64 KiB pages. Default: 1024 (64 MiB).
	MemoryLimitPages int `toml:"memory_limit_pages"`
	// CallTimeout bounds one call into a guest. Default: "1s".
	CallTimeout Duration `toml:"call_timeout"`
	// Instances per (deployment, guest) pool. Default: 2.
	Instances int `toml:"instances"`
	// MaxOutputSize bounds what a guest may hand back (tensors, logs). Default: "64MiB".
	MaxOutputSize ByteSize `toml:"max_output_size"`
	// AllowPreciseClock lets deployments grant their guests full-resolution
	// clocks (precise_clock); otherwise such a deployment is refused and
	// guests' clocks tick in whole milliseconds. Default: false.
	AllowPreciseClock bool `toml:"allow_precise_clock"`
	// CacheMaxSize bounds the compiled guests kept under storage.cache_dir
	// (one entry per guest version and memory limit, ~10 MB for a Go
	// guest); the least recently used go first. Default: "1GiB".
	CacheMaxSize ByteSize `toml:"cache_max_size"`
}

// Terminal configures the debugging terminal sessions. They are not built
// yet: the keys are validated, then ignored, and the TerminalService answers
// UNIMPLEMENTED.
type Terminal struct {
	// Enabled turns the TerminalService on. Default: true.
	Enabled bool `toml:"enabled"`
	// Shell started when a session names no command. Default: "/bin/sh".
	Shell string `toml:"shell"`
	// Sandbox is "namespaces" (user/mount/pid/net namespaces), "bwrap" or "none". Default: "namespaces".
	Sandbox string `toml:"sandbox"`
	// MaxSessions at once. Default: 4.
	MaxSessions int `toml:"max_sessions"`
	// IdleTimeout closes a session without input for this long. Default: "15m".
	IdleTimeout Duration `toml:"idle_timeout"`
}

// Metrics configures sampling. It is not built yet: the keys are
// validated, then ignored.
type Metrics struct {
	// Interval between samples of CPU, memory, network and GPU. Default: "1s".
	Interval Duration `toml:"interval"`
	// GPU samples NVIDIA GPUs through NVML when present. Default: true.
	GPU bool `toml:"gpu"`
}

// Log configures log/slog.
type Log struct {
	// Level is "debug", "info", "warn" or "error". Default: "info".
	Level string `toml:"level"`
	// Format is "text" or "json". Default: "text".
	Format string `toml:"format"`
}

// Model is a static deployment declared by the operator.
type Model struct {
	// Name clients use over the inference protocol. Required.
	Name string `toml:"name"`
	// Version string reported in metadata. Default: "1".
	Version string `toml:"version"`
	// Format names the loader ("onnx"). Required.
	Format string `toml:"format"`
	// Path of the model file. Required.
	Path string `toml:"path"`
	// Batching overrides inference.batching for this model; keys left out
	// are taken from inference.batching.
	Batching *Batching `toml:"batching"`
	// Providers overrides inference.providers for this model.
	Providers []string `toml:"providers"`
	// Config values the model's guests may read (a static model has no
	// guests yet).
	Config map[string]string `toml:"config"`

	// batchingSet names the batching keys the file sets for this model,
	// zeros included (nil for a Config not parsed from a file).
	batchingSet map[string]bool
}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		Node:    Node{Name: hostname()},
		Listen:  Listen{GRPC: "0.0.0.0:50052", HTTP: "127.0.0.1:9090", MaxMessageSize: 64 << 20},
		Central: Central{HeartbeatInterval: Duration(30 * time.Second), ReportInterval: Duration(10 * time.Second)},
		Storage: Storage{StateDir: "var/state", CacheDir: "var/cache", ModelDir: "var/models", CacheMaxSize: 10 << 30},
		Native:  Native{ONNXRuntime: "lib/onnxruntime/libonnxruntime.so.1", LlamaDir: "lib/llama"},
		Limits: Limits{
			MaxDeployments: 16, KeepStopped: 256, MaxInflightBytes: 2 << 30, MemoryBudget: 8 << 30, MaxArtifactSize: 4 << 30,
			MaxConcurrentFetches: 2, MaxConcurrentLoads: 2, ShutdownTimeout: Duration(5 * time.Second),
			FetchTimeout: Duration(30 * time.Minute),
		},
		Inference: Inference{
			IntraOpThreads: 1, InterOpThreads: 1, Providers: []string{"cpu"},
			Batching:       Batching{MaxBatchSize: 8, QueueCapacity: 256, Instances: 2},
			CPULatencyHold: Duration(100 * time.Millisecond),
		},
		Guests:   Guests{MemoryLimitPages: 1024, CallTimeout: Duration(time.Second), Instances: 2, MaxOutputSize: 64 << 20, CacheMaxSize: 1 << 30},
		Terminal: Terminal{Enabled: true, Shell: "/bin/sh", Sandbox: "namespaces", MaxSessions: 4, IdleTimeout: Duration(15 * time.Minute)},
		Metrics:  Metrics{Interval: Duration(time.Second), GPU: true},
		Log:      Log{Level: "info", Format: "text"},
	}
}

func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "cyxwiz-node"
}

// syntaxError is a file that is not valid TOML, or whose values do not fit
// their keys' types. It reads as one line naming the file, the key and the
// line; errors.As finds the decoder's toml.ParseError under it.
type syntaxError struct {
	name string
	err  toml.ParseError
}

func (e *syntaxError) Error() string {
	if e.err.LastKey != "" {
		return fmt.Sprintf("config %s: %s (line %d): %s", e.name, e.err.LastKey, e.err.Position.Line, e.err.Message)
	}
	return fmt.Sprintf("config %s: line %d: %s", e.name, e.err.Position.Line, e.err.Message)
}

func (e *syntaxError) Unwrap() error { return e.err }

// Load reads, decodes and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(string(data), filepath.Dir(abs), path)
}

// Parse decodes TOML text over Default(), resolves relative paths against
// baseDir and validates the result. name labels errors (usually the path).
func Parse(text, baseDir, name string) (*Config, error) {
	cfg := Default()
	md, err := toml.Decode(text, &cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, &syntaxError{name: name, err: perr}
		}
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	var problems []string
	unknown := md.Undecoded()
	lines := keyLines(text, md, unknown)
	for i, k := range unknown {
		if lines[i] > 0 {
			problems = append(problems, fmt.Sprintf("%s (line %d): unknown key", k, lines[i]))
		} else {
			problems = append(problems, fmt.Sprintf("%s: unknown key", k))
		}
	}
	// TOML keys are case-sensitive, the decoder's match is not: it took
	// "LEVEL" for log.level, and with both in the file one of them at
	// random (it walks a map).
	miscased, spelled := caseVariants(md.Keys())
	lines = keyLines(text, md, miscased)
	for i, k := range miscased {
		at := ""
		if lines[i] > 0 {
			at = fmt.Sprintf(" (line %d)", lines[i])
		}
		problems = append(problems, fmt.Sprintf("%s%s: unknown key (keys are case-sensitive: %s)", k, at, spelled[i]))
	}
	// Which batching keys each model entry sets, whatever the layout
	// ([[models]] tables or an inline array): decode them again as maps.
	// The tables of strings are decoded again as they are written too: the
	// decoder leaves a map alone when the value is not a table (labels = 5
	// passed as no labels).
	var raw struct {
		Node struct {
			Labels any `toml:"labels"`
		} `toml:"node"`
		Models []struct {
			Batching map[string]any `toml:"batching"`
			Config   any            `toml:"config"`
		} `toml:"models"`
	}
	if _, err := toml.Decode(text, &raw); err == nil && len(raw.Models) == len(cfg.Models) {
		notTable := func(key string, path toml.Key, v any) {
			if _, ok := v.(map[string]any); ok || v == nil {
				return
			}
			if line := keyLines(text, md, []toml.Key{path})[0]; line > 0 {
				key = fmt.Sprintf("%s (line %d)", key, line)
			}
			problems = append(problems, fmt.Sprintf("%s: want a table of strings, got TOML type %s", key, tomlType(v)))
		}
		notTable("node.labels", toml.Key{"node", "labels"}, raw.Node.Labels)
		for i, m := range raw.Models {
			notTable(fmt.Sprintf("models[%d].config", i), toml.Key{"models", "config"}, m.Config)
			if m.Batching == nil {
				continue
			}
			cfg.Models[i].batchingSet = map[string]bool{}
			for k := range m.Batching {
				cfg.Models[i].batchingSet[k] = true
			}
		}
	}
	problems = append(problems, cfg.validate()...)
	if len(problems) > 0 {
		return nil, &Error{File: name, Problems: problems}
	}
	cfg.resolvePaths(baseDir)
	return &cfg, nil
}

// keyLines returns the line of each of keys in text (as syntaxError names
// it: "node.bogus (line 12)"), or 0 where it is not known. The decoder
// records each key's position but gives it out only in the ParseError of a
// value that fails to decode: text is decoded again into undecoded values
// (toml.Primitive) along a key's path, and the value at its end into
// lineProbe, which always fails. A key that several entries of an array of
// tables hold has one recorded position, the last entry's: it gets no line.
func keyLines(text string, md toml.MetaData, keys []toml.Key) []int {
	lines := make([]int, len(keys))
	if len(keys) == 0 {
		return lines
	}
	var root map[string]toml.Primitive
	pmd, err := toml.Decode(text, &root)
	if err != nil {
		return lines
	}
	seen := map[string]int{}
	for _, k := range md.Keys() {
		seen[k.String()]++
	}
	for i, k := range keys {
		if len(k) > 0 && seen[k.String()] == 1 {
			lines[i] = primitiveLine(&pmd, []map[string]toml.Primitive{root}, k)
		}
	}
	return lines
}

// caseVariants returns the keys of the file that name a field of Config
// only when case is ignored, each once, with the key as it is spelled: a
// key whose last part is such a variant, and the tables a dotted key or a
// table header names on its way ([Inference.batching]). Variants are
// followed as the decoder follows them.
func caseVariants(keys []toml.Key) (variants []toml.Key, spelled []string) {
	inFile := map[string]bool{}
	for _, k := range keys {
		inFile[k.String()] = true
	}
	reported := map[string]bool{}
	for _, k := range keys {
		t := reflect.TypeOf(Config{})
		var want toml.Key
		for i, part := range k {
			for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
				t = t.Elem()
			}
			if t.Kind() == reflect.Map {
				want = append(want, part) // any key, as written
				t = t.Elem()
				continue
			}
			if t.Kind() != reflect.Struct {
				break
			}
			f, name := fieldFor(t, part)
			if f == nil {
				break // unknown: md.Undecoded lists it
			}
			want = append(want, name)
			t = f.Type
			at := k[:i+1]
			if name == part || reported[at.String()] || (i < len(k)-1 && inFile[at.String()]) {
				continue // a parent in the file is reported as a key of its own
			}
			reported[at.String()] = true
			variants = append(variants, at)
			spelled = append(spelled, want.String())
		}
	}
	return variants, spelled
}

// fieldFor is the field of struct t that the decoder fills from key: the
// one whose toml name is key, else one whose name matches it ignoring case.
func fieldFor(t reflect.Type, key string) (*reflect.StructField, string) {
	var fold *reflect.StructField
	var foldName string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		if name == key {
			return &f, name
		}
		if fold == nil && strings.EqualFold(name, key) {
			fold, foldName = &f, name
		}
	}
	return fold, foldName
}

// tomlType names the TOML type of a decoded value.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case []any, []map[string]any:
		return "array"
	case time.Time:
		return "date-time"
	}
	return fmt.Sprintf("%T", v)
}

// primitiveLine looks for key in each of tables.
func primitiveLine(md *toml.MetaData, tables []map[string]toml.Primitive, key toml.Key) int {
	for _, t := range tables {
		v, ok := t[key[0]]
		if !ok {
			continue
		}
		if len(key) == 1 {
			var perr toml.ParseError
			if errors.As(md.PrimitiveDecode(v, &lineProbe{}), &perr) {
				return perr.Position.Line
			}
			return 0
		}
		// A table, or an array of tables ([[models]], or an inline array).
		var sub []map[string]toml.Primitive
		if md.PrimitiveDecode(v, &sub) != nil {
			var one map[string]toml.Primitive
			if md.PrimitiveDecode(v, &one) != nil {
				return 0
			}
			sub = []map[string]toml.Primitive{one}
		}
		if line := primitiveLine(md, sub, key[1:]); line > 0 {
			return line
		}
	}
	return 0
}

// lineProbe fails to decode any value, so that the decoder says where the
// value is.
type lineProbe struct{}

func (*lineProbe) UnmarshalTOML(any) error { return errors.New("probe") }

// Error lists every problem found in a config file, each prefixed by its key.
type Error struct {
	File     string
	Problems []string
}

func (e *Error) Error() string {
	return fmt.Sprintf("config %s: %s", e.File, strings.Join(e.Problems, "; "))
}

func (c *Config) resolvePaths(base string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.Storage.StateDir)
	abs(&c.Storage.CacheDir)
	abs(&c.Storage.ModelDir)
	abs(&c.Native.ONNXRuntime)
	abs(&c.Native.LlamaDir)
	for i := range c.Models {
		abs(&c.Models[i].Path)
	}
}

// validate returns every problem, each as "key.path: what is wrong".
func (c *Config) validate() []string {
	var p []string
	bad := func(key, format string, args ...any) {
		p = append(p, key+": "+fmt.Sprintf(format, args...))
	}
	checkAddr := func(key, addr string, required bool) {
		if addr == "" {
			if required {
				bad(key, "must not be empty")
			}
			return
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			bad(key, "want host:port, got %q", addr)
			return
		}
		// What net.Listen and net.Dial accept: a number up to 65535 or a
		// service name ("127.0.0.1:99999" used to pass here and fail at start).
		if _, err := net.LookupPort("tcp", port); err != nil {
			bad(key, "bad port in %q: %v", addr, err)
		}
	}
	positive := func(key string, v int) {
		if v <= 0 {
			bad(key, "must be > 0, got %d", v)
		}
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad(key, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
	}

	checkAddr("listen.grpc", c.Listen.GRPC, true)
	checkAddr("listen.http", c.Listen.HTTP, false)
	checkAddr("central.address", c.Central.Address, false)
	if sameListenAddr(c.Listen.GRPC, c.Listen.HTTP) {
		bad("listen.http", "%q is also listen.grpc's address (%q): the node cannot bind both", c.Listen.HTTP, c.Listen.GRPC)
	}
	if c.Node.ID != "" && !ValidNodeID(c.Node.ID) {
		bad("node.id", "want 1 to 128 letters, digits, '.', '_' or '-', got %q", c.Node.ID)
	}
	if c.Listen.MaxMessageSize < 1<<20 || c.Listen.MaxMessageSize > MaxMessageSize {
		bad("listen.max_message_size", "must be between 1MiB and %v (a protobuf message cannot be larger), got %v", ByteSize(MaxMessageSize), c.Listen.MaxMessageSize)
	}
	if c.Central.HeartbeatInterval <= 0 {
		bad("central.heartbeat_interval", "must be > 0")
	}
	if c.Central.ReportInterval <= 0 {
		bad("central.report_interval", "must be > 0")
	}
	for key, v := range map[string]string{"storage.state_dir": c.Storage.StateDir, "storage.cache_dir": c.Storage.CacheDir} {
		if v == "" {
			bad(key, "must not be empty")
		}
	}
	positive("limits.max_deployments", c.Limits.MaxDeployments)
	positive("limits.keep_stopped", c.Limits.KeepStopped)
	if c.Limits.MaxInflightBytes < c.Listen.MaxMessageSize {
		bad("limits.max_inflight_bytes", "must be at least listen.max_message_size (%v), got %v", c.Listen.MaxMessageSize, c.Limits.MaxInflightBytes)
	}
	positive("limits.max_concurrent_fetches", c.Limits.MaxConcurrentFetches)
	positive("limits.max_concurrent_loads", c.Limits.MaxConcurrentLoads)
	if c.Limits.MemoryBudget <= 0 {
		bad("limits.memory_budget", "must be > 0")
	}
	if c.Limits.MaxArtifactSize <= 0 {
		bad("limits.max_artifact_size", "must be > 0")
	}
	if c.Limits.FetchTimeout <= 0 {
		bad("limits.fetch_timeout", "must be > 0")
	}
	if c.Limits.ShutdownTimeout <= 0 {
		bad("limits.shutdown_timeout", "must be > 0")
	}
	for key, v := range map[string]int{"inference.intra_op_threads": c.Inference.IntraOpThreads, "inference.inter_op_threads": c.Inference.InterOpThreads} {
		if v < 0 || v > MaxThreads {
			bad(key, "must be between 0 (the runtime chooses) and %d, got %d", MaxThreads, v)
		}
	}
	p = append(p, checkProviders("inference.providers", c.Inference.Providers)...)
	p = append(p, c.Inference.Batching.validate("inference.batching")...)
	if l := c.Inference.CPULatency; l != nil && (*l < 0 || *l > Duration(time.Second)) {
		bad("inference.cpu_latency", "must be between 0 and 1s, got %v", l.D())
	}
	// The governor looks every quarter hold: under 1 ms it nears a busy loop.
	if h := c.Inference.CPULatencyHold; h < Duration(time.Millisecond) || h > Duration(time.Hour) {
		bad("inference.cpu_latency_hold", "must be between 1ms and 1h, got %v", h.D())
	}
	positive("guests.memory_limit_pages", c.Guests.MemoryLimitPages)
	if c.Guests.MemoryLimitPages > MaxGuestMemoryPages {
		bad("guests.memory_limit_pages", "must be <= %d (2 GiB), got %d", MaxGuestMemoryPages, c.Guests.MemoryLimitPages)
	}
	if c.Guests.CallTimeout <= 0 {
		bad("guests.call_timeout", "must be > 0")
	}
	if c.Guests.Instances <= 0 || c.Guests.Instances > MaxGuestInstances {
		bad("guests.instances", "must be between 1 and %d, got %d", MaxGuestInstances, c.Guests.Instances)
	}
	if c.Guests.CacheMaxSize <= 0 {
		bad("guests.cache_max_size", "must be > 0, got %v", c.Guests.CacheMaxSize)
	}
	if c.Guests.MaxOutputSize <= 0 || c.Guests.MaxOutputSize > MaxGuestOutputSize {
		bad("guests.max_output_size", "must be > 0 and <= %v (what the guest ABI's 32-bit lengths carry), got %v", ByteSize(MaxGuestOutputSize), c.Guests.MaxOutputSize)
	}
	oneOf("terminal.sandbox", c.Terminal.Sandbox, "namespaces", "bwrap", "none")
	positive("terminal.max_sessions", c.Terminal.MaxSessions)
	if c.Terminal.IdleTimeout <= 0 {
		bad("terminal.idle_timeout", "must be > 0")
	}
	if c.Metrics.Interval <= 0 {
		bad("metrics.interval", "must be > 0")
	}
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf("log.format", c.Log.Format, "text", "json")

	seen := map[string]bool{}
	for i := range c.Models {
		m := &c.Models[i]
		key := fmt.Sprintf("models[%d]", i)
		if m.Name == "" {
			bad(key+".name", "must not be empty")
		} else if msg := checkModelName(m.Name); msg != "" {
			bad(key+".name", "%s", msg)
		} else if seen[m.Name] {
			bad(key+".name", "duplicate model name %q", m.Name)
		}
		seen[m.Name] = true
		if m.Format == "" {
			bad(key+".format", "must not be empty")
		}
		if m.Path == "" {
			bad(key+".path", "must not be empty")
		}
		if m.Version == "" {
			m.Version = "1"
		}
		if m.Batching != nil {
			m.Batching.inherit(c.Inference.Batching, m.batchingSet)
			p = append(p, m.Batching.validate(key+".batching")...)
		}
		if m.Providers != nil {
			p = append(p, checkProviders(key+".providers", m.Providers)...)
		}
	}
	return p
}

// MaxGuestMemoryPages is the most guests.memory_limit_pages may be: the
// guest runtime's bound (guest.Config.Validate), 2 GiB of 64 KiB pages.
const MaxGuestMemoryPages = 32768

// MaxMessageSize is the most listen.max_message_size may be: protobuf
// messages, gRPC's unit, are smaller than 2 GiB.
const MaxMessageSize = 1<<31 - 1

// MaxGuestOutputSize is the most guests.max_output_size may be: one byte
// under 2 GiB, the largest length the guest ABI's signed 32-bit results
// carry.
const MaxGuestOutputSize = 1<<31 - 1

// MaxGuestInstances is the most guests.instances may be: the guest
// runtime's bound on one pool (guest.MaxInstances).
const MaxGuestInstances = 256

// MaxThreads bounds inference.intra_op_threads and inter_op_threads: more
// threads per model than any machine has cores only adds contention.
const MaxThreads = 1024

// validNodeID is what a node id may look like, written by hand or generated.
var validNodeID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// ValidNodeID reports whether id may be a node's identity (node.id, or the
// one kept in storage.state_dir/node-id): 1 to 128 letters, digits, '.',
// '_' or '-'.
func ValidNodeID(id string) bool { return validNodeID.MatchString(id) }

// sameListenAddr reports whether two listen addresses would take the same
// TCP port: the same non-zero port on hosts that overlap (see
// hostsOverlap).
func sameListenAddr(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return false
	}
	na, err1 := net.LookupPort("tcp", pa)
	nb, err2 := net.LookupPort("tcp", pb)
	if err1 != nil || err2 != nil || na == 0 || na != nb {
		return false
	}
	return hostsOverlap(ha, hb)
}

// hostsOverlap reports whether listening on hosts a and b (on one port)
// collides, without looking names up: an unspecified host ("", "0.0.0.0",
// "::") takes the port on every address (Go listens on it dual-stack);
// "localhost" is the loopback addresses 127.0.0.1 and ::1; IP literals
// compare as addresses ("::ffff:127.0.0.1" is 127.0.0.1); other names
// compare as names.
func hostsOverlap(a, b string) bool {
	ipsOf := func(h string) (all bool, ips []net.IP) {
		if h == "" {
			return true, nil
		}
		if strings.EqualFold(strings.TrimSuffix(h, "."), "localhost") {
			return false, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		}
		if ip := net.ParseIP(h); ip != nil {
			return ip.IsUnspecified(), []net.IP{ip}
		}
		return false, nil
	}
	allA, ipsA := ipsOf(a)
	allB, ipsB := ipsOf(b)
	if allA || allB {
		return true
	}
	if ipsA == nil || ipsB == nil {
		return strings.EqualFold(a, b)
	}
	for _, x := range ipsA {
		for _, y := range ipsB {
			if x.Equal(y) {
				return true
			}
		}
	}
	return false
}

func checkProviders(key string, ps []string) []string {
	var p []string
	if len(ps) == 0 {
		return []string{key + ": must list at least one provider (\"cpu\")"}
	}
	for i, name := range ps {
		switch name {
		case "cpu", "cuda", "tensorrt":
		default:
			p = append(p, fmt.Sprintf("%s[%d]: unknown provider %q (want cpu, cuda or tensorrt)", key, i, name))
		}
	}
	return p
}

// maxModelNameBytes bounds a model's name, the deployment id it serves
// under, as the DeploymentService bounds the ids it is given.
const maxModelNameBytes = 512

// checkModelName returns why name cannot name a model, or "". A control
// character (a newline, say) in a name forges lines in logs and in
// cyxwizctl's tables; the DeploymentService refuses such ids too.
func checkModelName(name string) string {
	if len(name) > maxModelNameBytes {
		return fmt.Sprintf("is %d bytes long: at most %d", len(name), maxModelNameBytes)
	}
	for i, r := range name {
		if unicode.IsControl(r) {
			return fmt.Sprintf("%q has a control character (%U) at byte %d", name, r, i)
		}
	}
	return ""
}

// inherit fills the keys a model's batching table leaves out from the
// node-wide defaults: the keys not in set, or (set nil, a Config built in
// code) the zero ones. A key the file sets keeps its value, 0 included:
// max_queue_delay_us = 0 means no delay for that model. The preferred sizes
// come with the maximum, as for a deployment assigned over gRPC
// (deploy.WithBatchingDefaults): a model that sets its own max_batch_size
// (1 to turn batching off) keeps its own preferred sizes, or none.
func (b *Batching) inherit(def Batching, set map[string]bool) {
	left := func(key string, zero bool) bool {
		if set == nil {
			return zero
		}
		return !set[key]
	}
	if left("max_batch_size", b.MaxBatchSize == 0) {
		b.MaxBatchSize = def.MaxBatchSize
		if left("preferred_batch_sizes", b.PreferredBatchSizes == nil) {
			b.PreferredBatchSizes = def.PreferredBatchSizes
		}
	}
	if left("max_queue_delay_us", b.MaxQueueDelayUS == 0) {
		b.MaxQueueDelayUS = def.MaxQueueDelayUS
	}
	if left("queue_capacity", b.QueueCapacity == 0) {
		b.QueueCapacity = def.QueueCapacity
	}
	if left("instances", b.Instances == 0) {
		b.Instances = def.Instances
	}
}

// The batching bounds are the engine's: a file the check accepts, the
// engine takes.
const maxQueueDelayUS = int(engine.MaxQueueDelayLimit / time.Microsecond)

func (b Batching) validate(key string) []string {
	var p []string
	if b.MaxBatchSize < 0 {
		p = append(p, fmt.Sprintf("%s.max_batch_size: must be >= 0, got %d", key, b.MaxBatchSize))
	}
	if len(b.PreferredBatchSizes) > 0 && b.MaxBatchSize <= 1 {
		// The engine refuses preferred sizes without batching.
		p = append(p, fmt.Sprintf("%s.preferred_batch_sizes: need max_batch_size > 1 (batching on), got max_batch_size %d", key, b.MaxBatchSize))
	}
	for i, s := range b.PreferredBatchSizes {
		if s <= 0 || (b.MaxBatchSize > 1 && s > b.MaxBatchSize) {
			p = append(p, fmt.Sprintf("%s.preferred_batch_sizes[%d]: must be in 1..max_batch_size (%d), got %d", key, i, b.MaxBatchSize, s))
		}
	}
	if b.MaxQueueDelayUS < 0 {
		p = append(p, fmt.Sprintf("%s.max_queue_delay_us: must be >= 0, got %d", key, b.MaxQueueDelayUS))
	} else if b.MaxQueueDelayUS > maxQueueDelayUS {
		p = append(p, fmt.Sprintf("%s.max_queue_delay_us: at most %d (one hour), got %d", key, maxQueueDelayUS, b.MaxQueueDelayUS))
	}
	if b.QueueCapacity <= 0 || b.QueueCapacity > engine.QueueCapacityLimit {
		p = append(p, fmt.Sprintf("%s.queue_capacity: must be in 1..%d, got %d", key, engine.QueueCapacityLimit, b.QueueCapacity))
	}
	if b.Instances <= 0 || b.Instances > engine.InstancesLimit {
		p = append(p, fmt.Sprintf("%s.instances: must be in 1..%d, got %d", key, engine.InstancesLimit, b.Instances))
	}
	if b.MaxBatchSize > engine.MaxBatchSizeLimit {
		p = append(p, fmt.Sprintf("%s.max_batch_size: at most %d, got %d", key, engine.MaxBatchSizeLimit, b.MaxBatchSize))
	}
	return p
}

// BatchingFor returns the effective batching of model m.
func (c *Config) BatchingFor(m Model) Batching {
	if m.Batching != nil {
		return *m.Batching
	}
	return c.Inference.Batching
}

// ProvidersFor returns the effective providers of model m.
func (c *Config) ProvidersFor(m Model) []string {
	if m.Providers != nil {
		return m.Providers
	}
	return c.Inference.Providers
}
