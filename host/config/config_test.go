package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/cyxwiz/cyxwiz-node/host/engine"
)

func TestRepoNodeTOMLIsValid(t *testing.T) {
	cfg, err := Load("../../node.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.GRPC != "0.0.0.0:50052" {
		t.Errorf("listen.grpc = %q", cfg.Listen.GRPC)
	}
	if len(cfg.Models) != 1 || cfg.Models[0].Name != "ppocr-cls" {
		t.Fatalf("models = %+v", cfg.Models)
	}
	if !filepath.IsAbs(cfg.Models[0].Path) || !strings.HasSuffix(cfg.Models[0].Path, "lib/models/ppocr-cls.onnx") {
		t.Errorf("model path not resolved: %q", cfg.Models[0].Path)
	}
	b := cfg.BatchingFor(cfg.Models[0])
	if b.MaxBatchSize != 8 || b.QueueCapacity != 256 || b.MaxQueueDelayUS != 0 || b.Instances != 2 {
		t.Errorf("batching did not inherit defaults: %+v", b)
	}
}

func TestEmptyFileGivesDefaults(t *testing.T) {
	cfg, err := Parse("", "/base", "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	if cfg.Listen.GRPC != def.Listen.GRPC || cfg.Limits.ShutdownTimeout.D() != 5*time.Second {
		t.Errorf("defaults not applied: %+v", cfg.Listen)
	}
	if cfg.Storage.StateDir != "/base/var/state" {
		t.Errorf("state_dir = %q, want resolved against base", cfg.Storage.StateDir)
	}
}

func TestValues(t *testing.T) {
	cfg, err := Parse(`
[listen]
max_message_size = "16MiB"
[central]
address = "central.example:50051"
heartbeat_interval = "2s"
[storage]
state_dir = "/abs/state"
cache_max_size = "1.5GB"
`, "/base", "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.MaxMessageSize != 16<<20 || cfg.Central.HeartbeatInterval.D() != 2*time.Second ||
		cfg.Storage.StateDir != "/abs/state" || cfg.Storage.CacheMaxSize != 1_500_000_000 {
		t.Errorf("values not decoded: %+v %+v %+v", cfg.Listen, cfg.Central, cfg.Storage)
	}
}

// Each bad input gives an error naming the key (and line where the decoder knows it).
func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"unknown key", "[listen]\ngrpcc = \"x\"\n", []string{"listen.grpcc", "unknown key"}},
		{"unknown table", "[nope]\na = 1\n", []string{"nope.a", "unknown key"}},
		{"unknown nested key", "[[models]]\nname=\"a\"\nformat=\"onnx\"\npath=\"m\"\n[models.batching]\nfoo = 1\n", []string{"models.batching.foo"}},
		{"wrong type", "[listen]\ngrpc = 5\n", []string{"listen.grpc", "line 2"}},
		{"bad duration", "[central]\nheartbeat_interval = \"soon\"\n", []string{"central.heartbeat_interval", "line 2", "duration"}},
		{"bad size", "[limits]\nmemory_budget = \"lots\"\n", []string{"limits.memory_budget", "line 2", "size"}},
		{"syntax", "[listen\n", []string{"line 2", "table name"}},
		{"bad address", "[listen]\ngrpc = \"nope\"\n", []string{"listen.grpc", "host:port"}},
		{"negative", "[limits]\nmax_deployments = -1\n", []string{"limits.max_deployments", "> 0"}},
		{"zero duration", "[limits]\nshutdown_timeout = \"0s\"\n", []string{"limits.shutdown_timeout"}},
		{"log level", "[log]\nlevel = \"loud\"\n", []string{"log.level", "loud"}},
		{"log format", "[log]\nformat = \"xml\"\n", []string{"log.format"}},
		{"sandbox", "[terminal]\nsandbox = \"chroot\"\n", []string{"terminal.sandbox"}},
		{"provider", "[inference]\nproviders = [\"cpu\", \"tpu\"]\n", []string{"inference.providers[1]", "tpu"}},
		{"no providers", "[inference]\nproviders = []\n", []string{"inference.providers"}},
		{"preferred > max", "[inference.batching]\nmax_batch_size = 4\npreferred_batch_sizes = [8]\n", []string{"inference.batching.preferred_batch_sizes[0]"}},
		{"cpu latency", "[inference]\ncpu_latency = \"-1us\"\n", []string{"inference.cpu_latency", "between 0 and 1s"}},
		{"cpu latency hold", "[inference]\ncpu_latency_hold = \"0s\"\n", []string{"inference.cpu_latency_hold"}},
		// Looked at every quarter hold: a nanosecond hold is a busy loop.
		{"cpu latency hold tiny", "[inference]\ncpu_latency_hold = \"1ns\"\n", []string{"inference.cpu_latency_hold"}},
		{"guest pages", "[guests]\nmemory_limit_pages = 70000\n", []string{"guests.memory_limit_pages"}},
		{"model name", "[[models]]\nformat=\"onnx\"\npath=\"m\"\n", []string{"models[0].name"}},
		{"model dup", "[[models]]\nname=\"a\"\nformat=\"onnx\"\npath=\"m\"\n[[models]]\nname=\"a\"\nformat=\"onnx\"\npath=\"m\"\n", []string{"models[1].name", "duplicate"}},
		{"model path", "[[models]]\nname=\"a\"\nformat=\"onnx\"\n", []string{"models[0].path"}},
		{"model queue", "[[models]]\nname=\"a\"\nformat=\"onnx\"\npath=\"m\"\n[models.batching]\nqueue_capacity = -3\n", []string{"models[0].batching.queue_capacity"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantParseError(t, tc.toml, tc.want) })
	}
}

func TestAllProblemsAtOnce(t *testing.T) {
	_, err := Parse("[limits]\nmax_deployments = 0\nmax_concurrent_loads = 0\n[log]\nlevel = \"x\"\n", "/", "n.toml")
	cerr, ok := err.(*Error)
	if !ok || len(cerr.Problems) != 3 {
		t.Fatalf("want 3 problems, got %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("want not-exist error, got %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// TestCPULatency: unset is off (nil); "0us" is a limit of 0, not unset.
func TestCPULatency(t *testing.T) {
	c, err := Parse("", "/", "n.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Inference.CPULatency != nil || c.Inference.CPULatencyHold.D() != 100*time.Millisecond {
		t.Fatalf("defaults: %v, hold %v", c.Inference.CPULatency, c.Inference.CPULatencyHold)
	}
	c, err = Parse("[inference]\ncpu_latency = \"0us\"\ncpu_latency_hold = \"1s\"\n", "/", "n.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Inference.CPULatency == nil || *c.Inference.CPULatency != 0 || c.Inference.CPULatencyHold.D() != time.Second {
		t.Fatalf("set: %v, hold %v", c.Inference.CPULatency, c.Inference.CPULatencyHold)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1024": 1024, "64MiB": 64 << 20, "2GiB": 2 << 30, "1KB": 1000, "0.5KiB": 512, "7B": 7} {
		var s ByteSize
		if err := s.UnmarshalText([]byte(in)); err != nil || s != want {
			t.Errorf("%q: got %d, %v; want %d", in, s, err, want)
		}
	}
	for _, in := range []string{"", "-1MiB", "MiB", "ten", "NaN", "Inf", "1e30", "9EiB", "8388608TiB"} {
		var s ByteSize
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// A key a model's batching table sets keeps its value, zero included; the
// keys it leaves out come from [inference.batching].
func TestModelBatchingZeroIsKept(t *testing.T) {
	c, err := Parse(`[inference.batching]
max_queue_delay_us = 500
instances = 3
[[models]]
name = "a"
format = "onnx"
path = "a.onnx"
[models.batching]
max_queue_delay_us = 0
[[models]]
name = "b"
format = "onnx"
path = "b.onnx"
[models.batching]
queue_capacity = 7
`, "/base", "x")
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.BatchingFor(c.Models[0]), c.BatchingFor(c.Models[1])
	if a.MaxQueueDelayUS != 0 || a.Instances != 3 {
		t.Errorf("model a: delay %d, instances %d; want 0 (set) and 3 (inherited)", a.MaxQueueDelayUS, a.Instances)
	}
	if b.MaxQueueDelayUS != 500 || b.QueueCapacity != 7 {
		t.Errorf("model b: delay %d, queue %d; want 500 (inherited) and 7 (set)", b.MaxQueueDelayUS, b.QueueCapacity)
	}
}

// The same per-model inheritance when the models are an inline array.
func TestModelBatchingInlineArray(t *testing.T) {
	c, err := Parse(`models = [
  {name = "a", format = "onnx", path = "a.onnx", batching = {queue_capacity = 7}},
  {name = "b", format = "onnx", path = "b.onnx", batching = {max_queue_delay_us = 0}},
]
[inference.batching]
max_queue_delay_us = 500
`, "/base", "x")
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.BatchingFor(c.Models[0]), c.BatchingFor(c.Models[1])
	if a.MaxQueueDelayUS != 500 || a.QueueCapacity != 7 || b.MaxQueueDelayUS != 0 {
		t.Errorf("a: delay %d queue %d (want 500, 7); b: delay %d (want 0)", a.MaxQueueDelayUS, a.QueueCapacity, b.MaxQueueDelayUS)
	}
}

// What the config check accepts, the engine takes: the same upper bounds.
func TestBatchingUpperBounds(t *testing.T) {
	for _, kv := range []string{"max_queue_delay_us = 7200000000", "queue_capacity = 2000000", "instances = 5000", "max_batch_size = 100000"} {
		if _, err := Parse("[inference.batching]\n"+kv+"\n", "/b", "x"); err == nil {
			t.Errorf("%s: accepted", kv)
		}
	}
}

// The engine's bounds, written here without importing the engine.
func TestBatchingBoundsMatchEngine(t *testing.T) {
	if maxQueueDelayUS != int(engine.MaxQueueDelayLimit/time.Microsecond) {
		t.Errorf("max_queue_delay_us bound %d, engine %v", maxQueueDelayUS, engine.MaxQueueDelayLimit)
	}
	if engine.QueueCapacityLimit != 1<<20 || engine.InstancesLimit != 1024 || engine.MaxBatchSizeLimit != 1<<16 {
		t.Error("engine limits changed: update Batching.validate")
	}
}

// Values check-config used to accept and serve then refused at start-up:
// the check must refuse them too, naming the key.
func TestRefusedAtStartIsRefusedByCheck(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		// net.Listen: "address 99999: invalid port".
		{"port out of range", "[listen]\ngrpc = \"127.0.0.1:99999\"\n", []string{"listen.grpc", "port"}},
		{"port not a number", "[listen]\nhttp = \"127.0.0.1:nope\"\n", []string{"listen.http", "port"}},
		{"central port", "[central]\naddress = \"central:70000\"\n", []string{"central.address", "port"}},
		// The second listener finds the port taken.
		{"grpc and http share a port", "[listen]\ngrpc = \"127.0.0.1:9090\"\n", []string{"listen.http", "listen.grpc"}},
		{"http on grpc's wildcard port", "[listen]\ngrpc = \"0.0.0.0:8000\"\nhttp = \"127.0.0.1:8000\"\n", []string{"listen.http"}},
		// nodeID: "want 1 to 128 letters...".
		{"node id with a space", "[node]\nid = \"node 1\"\n", []string{"node.id", "node 1"}},
		{"node id too long", "[node]\nid = \"" + strings.Repeat("a", 129) + "\"\n", []string{"node.id"}},
		// guest.NewRuntime: "memory_limit_pages: 40000 is over 32768".
		{"guest pages over 2 GiB", "[guests]\nmemory_limit_pages = 40000\n", []string{"guests.memory_limit_pages", "32768"}},
		// engine.Config.Validate: "preferred_batch_sizes: need max_batch_size > 1".
		{"preferred without batching", "[inference.batching]\nmax_batch_size = 1\npreferred_batch_sizes = [1]\n", []string{"inference.batching.preferred_batch_sizes", "max_batch_size > 1"}},
		{"model preferred without batching", "[[models]]\nname=\"a\"\nformat=\"onnx\"\npath=\"m\"\n[models.batching]\nmax_batch_size = 0\npreferred_batch_sizes = [4]\n", []string{"models[0].batching.preferred_batch_sizes"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantParseError(t, tc.toml, tc.want) })
	}
	// What stays accepted.
	for _, ok := range []string{
		"[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n", // two ephemeral ports
		"[listen]\ngrpc = \"127.0.0.1:http\"\n",                      // a service name
		"[listen]\ngrpc = \"127.0.0.1:9090\"\nhttp = \"127.0.0.2:9090\"\n",
		"[node]\nid = \"node-1.lab_a\"\n",
		"[guests]\nmemory_limit_pages = 32768\n",
		"[inference.batching]\nmax_batch_size = 2\npreferred_batch_sizes = [2]\n",
	} {
		if _, err := Parse(ok, "/base", "node.toml"); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

// Whatever batching the config check accepts, the engine takes, and the
// other way round (the two validations side by side).
func TestBatchingAgreesWithEngine(t *testing.T) {
	for _, max := range []int{0, 1, 2, 8} {
		for _, pref := range [][]int{nil, {1}, {2}, {8}, {9}} {
			b := Batching{MaxBatchSize: max, PreferredBatchSizes: pref, QueueCapacity: 1, Instances: 1}
			e := engine.Config{MaxBatchSize: max, PreferredBatchSizes: pref, QueueCapacity: 1, Instances: 1}
			cfgOK, engOK := len(b.validate("b")) == 0, e.Validate() == nil
			if cfgOK != engOK {
				t.Errorf("max_batch_size %d, preferred %v: config accepts: %v, engine accepts: %v (%v)", max, pref, cfgOK, engOK, e.Validate())
			}
		}
	}
}

// Sizes are exact: whole numbers bit for bit, decimal fractions rounded to
// the nearest byte (truncated, 4.1*1e9 was 4099999999 in float64).
func TestByteSizeExact(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"9007199254740993":    9007199254740993, // 2^53+1
		"9007199254740993B":   9007199254740993,
		"9223372036854775807": math.MaxInt64,
		"4.1GB":               4_100_000_000,
		"4.1MB":               4_100_000,
		"1.005KB":             1005,
		"8191TiB":             8191 << 40,
		"0.5KiB":              512,
	} {
		var s ByteSize
		if err := s.UnmarshalText([]byte(in)); err != nil || s != want {
			t.Errorf("%q: got %d, %v; want %d", in, int64(s), err, int64(want))
		}
	}
	for _, in := range []string{"9223372036854775808", "8388608TiB", "-1", "-0.5KiB"} {
		var s ByteSize
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: accepted as %d", in, int64(s))
		}
	}
	// What String writes reads back the same (check-config's round trip).
	for _, v := range []ByteSize{9007199254740993, math.MaxInt64, 1<<62 + 1, 3 << 30} {
		var back ByteSize
		if err := back.UnmarshalText([]byte(v.String())); err != nil || back != v {
			t.Errorf("%d written %q read back as %d, %v", int64(v), v.String(), int64(back), err)
		}
	}
}

// wantParseError checks that Parse refuses toml with an error containing
// each of want.
func wantParseError(t *testing.T, toml string, want []string) {
	t.Helper()
	_, err := Parse(toml, "/base", "node.toml")
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// Sizes the node cannot honour were capped in silence (a 4GiB message
// limit became 4 GiB − 1 in gRPC and could never be marshalled; a 3GiB
// guest output limit became 2 GiB − 1); thread counts had no upper bound.
// They are refused, naming the key and the limit, and the limits pass.
func TestSizeAndThreadUpperBounds(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"message over 2GiB", "[listen]\nmax_message_size = \"4GiB\"\n", []string{"listen.max_message_size", "4GiB"}},
		{"guest output over 2GiB", "[guests]\nmax_output_size = \"3GiB\"\n", []string{"guests.max_output_size", "3GiB"}},
		{"intra-op threads", "[inference]\nintra_op_threads = 100000\n", []string{"inference.intra_op_threads", "1024", "100000"}},
		{"inter-op threads negative", "[inference]\ninter_op_threads = -1\n", []string{"inference.inter_op_threads", "-1"}},
		{"guest instances", "[guests]\ninstances = 100000\n", []string{"guests.instances", "256"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantParseError(t, tc.toml, tc.want) })
	}
	ok := fmt.Sprintf("[listen]\nmax_message_size = %d\n[guests]\nmax_output_size = %d\n[inference]\nintra_op_threads = %d\ninter_op_threads = 0\n",
		MaxMessageSize, MaxGuestOutputSize, MaxThreads)
	if _, err := Parse(ok, "/b", "x"); err != nil {
		t.Fatalf("the limits themselves: %v", err)
	}
}

// A file that is not TOML reads as one line naming file, key and line, and
// the decoder's error stays reachable with errors.As.
func TestSyntaxErrorWraps(t *testing.T) {
	_, err := Parse("[listen]\ngrpc = \n", "/b", "node.toml")
	var perr toml.ParseError
	if err == nil || !errors.As(err, &perr) {
		t.Fatalf("got %v, want a wrapped toml.ParseError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "node.toml") || !strings.Contains(msg, "line 2") {
		t.Errorf("message %q does not name the file and line", msg)
	}
}

// A model that sets its own max_batch_size does not inherit the node-wide
// preferred sizes (they come with the maximum, as for a deployment assigned
// over gRPC): max_batch_size = 1 turns its batching off, and a smaller
// maximum is not refused for sizes the model never asked for.
func TestModelMaxBatchSizeDropsInheritedPreferredSizes(t *testing.T) {
	c, err := Parse(`[inference.batching]
max_batch_size = 16
preferred_batch_sizes = [8, 16]
[[models]]
name = "off"
format = "onnx"
path = "a.onnx"
[models.batching]
max_batch_size = 1
[[models]]
name = "small"
format = "onnx"
path = "b.onnx"
[models.batching]
max_batch_size = 4
[[models]]
name = "inherits"
format = "onnx"
path = "c.onnx"
[models.batching]
instances = 1
`, "/base", "x")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]int{nil, nil, {8, 16}} {
		m := c.Models[i]
		if got := c.BatchingFor(m).PreferredBatchSizes; !slices.Equal(got, want) {
			t.Errorf("%s: preferred sizes %v, want %v", m.Name, got, want)
		}
	}
}

// A model's name is the deployment id it serves under: node.toml refuses
// what the DeploymentService refuses in ids (control characters, which
// forge log lines and table rows, and names over 512 bytes).
func TestModelNameRefusesControlCharactersAndLength(t *testing.T) {
	for name, tc := range map[string]struct{ name, want string }{
		"newline": {`"a\nb"`, `models[0].name: "a\nb" has a control character (U+000A) at byte 1`},
		"escape":  {`"cls\u001b[2J"`, `has a control character (U+001B) at byte 3`},
		"long":    {`"` + strings.Repeat("m", 513) + `"`, "models[0].name: is 513 bytes long: at most 512"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("[[models]]\nname = "+tc.name+"\nformat = \"onnx\"\npath = \"a.onnx\"\n", "/base", "x")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := Parse("[[models]]\nname = \"ppocr-cls v2 (ünïcode)\"\nformat = \"onnx\"\npath = \"a.onnx\"\n", "/base", "x"); err != nil {
		t.Fatalf("a plain name with spaces and letters: %v", err)
	}
}

func TestGuestCacheMaxSize(t *testing.T) {
	c, err := Parse("", "/base", "x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Guests.CacheMaxSize != 1<<30 {
		t.Errorf("default guests.cache_max_size = %v, want 1GiB", c.Guests.CacheMaxSize)
	}
	c, err = Parse("[guests]\ncache_max_size = \"200MiB\"\n", "/base", "x")
	if err != nil || c.Guests.CacheMaxSize != 200<<20 {
		t.Fatalf("200MiB: %v, %v", c, err)
	}
	if _, err := Parse("[guests]\ncache_max_size = \"0B\"\n", "/base", "x"); err == nil || !strings.Contains(err.Error(), "guests.cache_max_size") {
		t.Errorf("0B: %v, want an error naming the key", err)
	}
}

func TestKeepStopped(t *testing.T) {
	c, err := Parse("", "/base", "x")
	if err != nil || c.Limits.KeepStopped != 256 {
		t.Fatalf("default limits.keep_stopped: %v, %v", c, err)
	}
	if _, err := Parse("[limits]\nkeep_stopped = 0\n", "/base", "x"); err == nil || !strings.Contains(err.Error(), "limits.keep_stopped") {
		t.Errorf("keep_stopped = 0: %v, want an error naming the key", err)
	}
}

func TestMaxInflightBytes(t *testing.T) {
	c, err := Parse("", "/base", "x")
	if err != nil || c.Limits.MaxInflightBytes != 2<<30 {
		t.Fatalf("default limits.max_inflight_bytes: %v, %v", c, err)
	}
	// Below the largest message, a request of that size could never pass.
	_, err = Parse("[listen]\nmax_message_size = \"64MiB\"\n[limits]\nmax_inflight_bytes = \"32MiB\"\n", "/base", "x")
	if err == nil || !strings.Contains(err.Error(), "limits.max_inflight_bytes") {
		t.Errorf("max_inflight_bytes below max_message_size: %v, want an error naming the key", err)
	}
}
