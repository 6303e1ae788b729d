package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
)

// A start whose gRPC port is taken fails before any deployment starts:
// no static model is assigned and nothing is restored (restored downloads
// began, and were then cut short with their partial files thrown away, by
// the start-up failing). Seen through a stored deployment that Restore
// marks Failed at once (it wants the static model's name).
func TestPortInUseStartsNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg, dbPath := startupConfig(t, taken.Addr().String())
	var logs bytes.Buffer
	err = serve(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if !errors.Is(err, errStartup) || !strings.Contains(err.Error(), "listen grpc") {
		t.Fatalf("serve with its port taken: %v, want a start-up error naming the listener", err)
	}
	if strings.Contains(logs.String(), "deployment=") {
		t.Errorf("a start that could not bind its port started deployments:\n%s", logs.String())
	}
	if got := storedState(t, dbPath, "dep-m"); got != "Ready" {
		t.Errorf("a start that could not bind its port restored dep-m (stored state now %s)", got)
	}
}

// A stop requested during start-up (SIGTERM while the store lock or the
// guest runtime was awaited) starts no deployment: it started them all
// and then waited for their model loads before exiting (0, as any stop).
func TestStopDuringStartupStartsNothing(t *testing.T) {
	cfg, dbPath := startupConfig(t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var logs bytes.Buffer
	if err := serve(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatalf("serve stopped during start-up: %v, want a clean stop", err)
	}
	if strings.Contains(logs.String(), "deployment=") {
		t.Errorf("a start stopped before serving started deployments:\n%s", logs.String())
	}
	if got := storedState(t, dbPath, "dep-m"); got != "Ready" {
		t.Errorf("a start stopped before serving restored dep-m (stored state now %s)", got)
	}
}

// startupConfig is a node on grpc with a static model "m", whose state_dir
// holds a deployment dep-m stored Ready: a start that restores it logs so
// at once. It returns the config and the store's path.
func startupConfig(t *testing.T, grpc string) (*config.Config, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := config.Parse(fmt.Sprintf(`[listen]
grpc = %q
http = ""
[[models]]
name = "m"
format = "onnx"
path = "m.onnx"
`, grpc), dir, "node.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.Storage.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.Storage.StateDir, "deployments.db")
	spec, _ := json.Marshal(deploy.Spec{Name: "m", Format: "onnx",
		Model: artifact.Artifact{URI: "file://" + filepath.Join(dir, "other.onnx")}})
	st, err := store.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	if err := st.Put(store.Record{ID: "dep-m", Spec: spec, Desired: store.DesiredRunning, State: "Ready",
		Message: "serving", Created: now, Updated: now, Owner: deploy.OwnerCentral}); err != nil {
		t.Fatal(err)
	}
	return cfg, dbPath
}

// A second node on a state directory another node holds stops at the
// store's lock before it touches anything the first one uses: it tidied
// the artifact cache's tmp folder (deleting the running node's files
// there) and wrote a node id before the lock refused it.
func TestSecondNodeTouchesNothing(t *testing.T) {
	cfg, dbPath := startupConfig(t, "127.0.0.1:0")
	held, err := store.Open(dbPath) // the first node
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	tmp := filepath.Join(cfg.Storage.CacheDir, "artifacts", "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	inUse := filepath.Join(tmp, "download-in-progress")
	if err := os.WriteFile(inUse, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = serve(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second node: %v, want the store's lock to refuse it", err)
	}
	if _, err := os.Stat(inUse); err != nil {
		t.Errorf("the second node removed a file of the first one's cache: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Storage.StateDir, "node-id")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the second node wrote a node id (stat: %v)", err)
	}
}

// No start-up log line carries a key twice ("component=artifacts
// component=artifact-cache": the cache named itself under the name serve
// gave it).
func TestStartupLogKeysUnique(t *testing.T) {
	cfg, _ := startupConfig(t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := &dupKeys{t: t}
	if err := serve(ctx, cfg, slog.New(h)); err != nil {
		t.Fatal(err)
	}
	if h.records == 0 {
		t.Fatal("no log records")
	}
}

// dupKeys is a slog handler that fails t on a record with a repeated key.
type dupKeys struct {
	t       *testing.T
	attrs   []string
	records int
}

func (h *dupKeys) Enabled(context.Context, slog.Level) bool { return true }

func (h *dupKeys) Handle(_ context.Context, r slog.Record) error {
	h.records++
	keys := append([]string(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool { keys = append(keys, a.Key); return true })
	seen := map[string]bool{}
	for _, k := range keys {
		if seen[k] {
			h.t.Errorf("log %q repeats key %q (keys %v)", r.Message, k, keys)
		}
		seen[k] = true
	}
	return nil
}

func (h *dupKeys) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]string(nil), h.attrs...), func() []string {
		var ks []string
		for _, a := range as {
			ks = append(ks, a.Key)
		}
		return ks
	}()...)
	return &c
}

func (h *dupKeys) WithGroup(string) slog.Handler { return h }

// Once the stop is over, a late SIGINT (timeout(1) sends its signal twice)
// is ignored: it was given back its default action, so the second copy
// killed a node that had already stopped cleanly (or forced exit 1).
func TestSignalAfterStopIgnored(t *testing.T) {
	ctx, stop := signalContext(slog.New(slog.DiscardHandler), new(slog.LevelVar))
	stop()
	if ctx.Err() == nil {
		t.Fatal("context not cancelled by stop")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // a default action would have ended this process by now
}

// SIGUSR1 switches the node's logger to debug and back to its configured
// level.
func TestSIGUSR1TogglesDebugLogging(t *testing.T) {
	level := new(slog.LevelVar)
	buf := &syncBuffer{}
	log := newLogger(config.Log{Level: "warn", Format: "text"}, level, buf)
	_, stop := signalContext(log, level)
	defer stop()
	want := func(l slog.Level) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for level.Level() != l {
			if time.Now().After(deadline) {
				t.Fatalf("level %v, want %v", level.Level(), l)
			}
			time.Sleep(time.Millisecond)
		}
	}
	want(slog.LevelWarn)
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelWarn, slog.LevelDebug} {
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		want(l)
	}
	log.Debug("a debug line")
	if !strings.Contains(buf.String(), "a debug line") {
		t.Errorf("debug line not logged after SIGUSR1:\n%s", buf.String())
	}
	stop()

	// With log.level = "debug", SIGUSR1 switches to info and back.
	level = new(slog.LevelVar)
	log = newLogger(config.Log{Level: "debug", Format: "text"}, level, buf)
	_, stop2 := signalContext(log, level)
	defer stop2()
	for _, l := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		want(l)
	}
}

// syncBuffer is a bytes.Buffer that a logger's goroutines may write while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
