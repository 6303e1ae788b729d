package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

const richConfig = `[node]
id = "abc"
labels = { zone = "lab", "a.b" = "x y", "" = "empty", "ünï" = "q\"uote\n", "tab\tkey" = "" }
[listen]
grpc = "127.0.0.1:0"
http = ""
max_message_size = "1.5MiB"
[central]
token = "s3cr3t-token"
heartbeat_interval = "1h0m0.000000001s"
[storage]
cache_max_size = "0"
state_dir = "rel dir/with space"
[limits]
memory_budget = "0.1KB"
[inference]
providers = ["cuda", "cpu"]
cpu_latency = "1.5us"
cpu_latency_hold = "1h"
[inference.batching]
preferred_batch_sizes = [2, 4]
max_queue_delay_us = 7
[[models]]
name = "m1"
format = "onnx"
path = "rel/m1.onnx"
providers = ["cpu"]
config = { "k.1" = "v", "" = "e", "x" = "line1\nline2" }
[models.batching]
max_queue_delay_us = 0
preferred_batch_sizes = []
[[models]]
name = "m2"
version = "7"
format = "onnx"
path = "/abs/m2.onnx"
[models.config]
[models.batching]
instances = 3
[[models]]
name = "m3"
format = "gguf"
path = "m3.gguf"
`

// check-config's output, read back, is the same configuration (every key
// type: maps with odd keys, arrays, pointers, sizes, durations, models
// with batching/providers/config). Compared as JSON (exported fields).
func TestCheckConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.toml")
	os.WriteFile(path, []byte(richConfig), 0o644)
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	first, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "back.toml") // another folder: paths must not move
	os.WriteFile(other, out.Bytes(), 0o644)
	back, err := config.Load(other)
	if err != nil {
		t.Fatalf("check-config output does not load: %v\n%s", err, out.String())
	}
	if back.Central.Token != "<set>" {
		t.Errorf("central.token read back as %q, want it hidden as <set>", back.Central.Token)
	}
	back.Central.Token = first.Central.Token // hidden on purpose
	a, _ := json.Marshal(first)
	b, _ := json.Marshal(back)
	if !bytes.Equal(a, b) {
		t.Errorf("round trip differs:\n%s\n%s", a, b)
	}
	for i, m := range back.Models {
		if x, y := first.BatchingFor(first.Models[i]), back.BatchingFor(m); !jsonEq(x, y) {
			t.Errorf("model %s effective batching %+v, read back %+v", m.Name, x, y)
		}
	}
}

func jsonEq(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// check-config hides central.token (the shared secret between the node and
// the Central Server): its output ends up in CI logs and pasted issues.
func TestCheckConfigHidesToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.toml")
	os.WriteFile(path, []byte("[central]\ntoken = \"s3cr3t-token\"\n"), 0o644)
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String(), "s3cr3t-token") {
		t.Errorf("check-config prints central.token in clear:\n%s", grepLine(out.String(), "token"))
	}
}

// The first line is a TOML comment holding the path, quoted: a path with a
// newline must not end the comment and break the TOML.
func TestCheckConfigHeaderPathQuoted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a\n[x")
	os.WriteFile(path, []byte("[listen]\ngrpc = \"127.0.0.1:0\"\n"), 0o644)
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if _, err := config.Parse(out.String(), "/", "out"); err != nil {
		t.Errorf("check-config output is not a valid config: %v", err)
	}
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// A [[models]] format no loader knows is a bad value: check-config says so
// (it printed "ok") and serve refuses to start (it served without the
// model, one log line saying why). A known format that cannot load here
// (gguf) stays a deployment that fails with its reason.
func TestUnknownModelFormatRefused(t *testing.T) {
	// The port is taken: a serve that got past the check fails, and does
	// not run on.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "n.toml")
	os.WriteFile(path, []byte("[listen]\ngrpc = \""+taken.Addr().String()+"\"\nhttp = \"\"\n[[models]]\nname = \"a\"\nformat = \"gguf\"\npath = \"a.gguf\"\n[[models]]\nname = \"b\"\nformat = \"onnxx\"\npath = \"b.onnx\"\n"), 0o644)
	for _, cmd := range []string{"check-config", "serve"} {
		var out, errOut bytes.Buffer
		code := run([]string{cmd, "-c", path}, &out, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), `models[1].format: unknown format "onnxx"`) || !strings.Contains(errOut.String(), path) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and the key, the value and the file", cmd, code, errOut.String())
		}
		if strings.Contains(errOut.String(), "models[0]") {
			t.Errorf("%s: gguf refused: %q", cmd, errOut.String())
		}
	}
}

// guests.memory_limit_pages is bounded as the guest runtime bounds it:
// the largest value the check accepts starts the runtime.
func TestGuestPagesBoundMatchesRuntime(t *testing.T) {
	if err := (guest.Config{MemoryLimitPages: config.MaxGuestMemoryPages}).Validate(); err != nil {
		t.Errorf("config accepts guests.memory_limit_pages = %d, the guest runtime refuses it: %v", config.MaxGuestMemoryPages, err)
	}
	if err := (guest.Config{MemoryLimitPages: config.MaxGuestMemoryPages + 1}).Validate(); err == nil {
		t.Errorf("the guest runtime takes %d pages, config stops at %d", config.MaxGuestMemoryPages+1, config.MaxGuestMemoryPages)
	}
}

// check-config accepts [[models]] that will not serve here (a known format
// this build cannot load, a model file that is missing) but warns about
// each on stderr, naming the model and the reason; it said only "ok".
func TestCheckConfigWarnsModelsThatWillFail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.toml")
	good := filepath.Join(dir, "c.onnx")
	os.WriteFile(good, []byte("x"), 0o644)
	os.WriteFile(path, []byte("[[models]]\nname = \"a\"\nformat = \"gguf\"\npath = \"c.onnx\"\n[[models]]\nname = \"b\"\nformat = \"onnx\"\npath = \"missing.onnx\"\n[[models]]\nname = \"c\"\nformat = \"onnx\"\npath = \"c.onnx\"\n"), 0o644)
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
		t.Fatalf("check-config: exit %d: %s", code, errOut.String())
	}
	warn := errOut.String()
	for _, want := range []string{"warning: models[0] (a)", "llama.cpp", "warning: models[1] (b)", "missing.onnx"} {
		if !strings.Contains(warn, want) {
			t.Errorf("stderr %q does not contain %q", warn, want)
		}
	}
	// (Whether ONNX Runtime loads in this test process depends on the
	// tests before: c is only checked for its file.)
	if strings.Contains(warn, "c.onnx") {
		t.Errorf("warned about a model file that is there: %q", warn)
	}
}

// A [[models]] entry past limits.max_deployments is refused by serve at
// admission (logged once, then not even listed): check-config warns about
// it, naming the limit; it said only "ok".
func TestCheckConfigWarnsModelsPastMaxDeployments(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.toml")
	os.WriteFile(filepath.Join(dir, "m.onnx"), []byte("x"), 0o644)
	os.WriteFile(path, []byte("[limits]\nmax_deployments = 1\n[[models]]\nname = \"a\"\nformat = \"onnx\"\npath = \"m.onnx\"\n[[models]]\nname = \"b\"\nformat = \"onnx\"\npath = \"m.onnx\"\n"), 0o644)
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
		t.Fatalf("check-config: exit %d: %s", code, errOut.String())
	}
	// (Other warnings may come with these: whether ONNX Runtime loads in
	// this test process depends on the tests before.)
	var past []string
	for _, l := range strings.Split(errOut.String(), "\n") {
		if strings.Contains(l, "max_deployments") {
			past = append(past, l)
		}
	}
	if want := "warning: models[1] (b): will not be served: limits.max_deployments is 1"; len(past) != 1 || past[0] != want {
		t.Errorf("warnings naming max_deployments: %q, want only %q", past, want)
	}
}
