package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// Config configures a Runtime. Zero values take the defaults below.
type Config struct {
	// CacheDir keeps compiled guests across restarts (a hit takes ~40 ms
	// instead of ~1 s). Default: "" (in memory only).
	CacheDir string
	// CacheMaxBytes bounds the compiled guests kept in CacheDir (one
	// entry per guest version and memory limit, ~10 MB for a Go guest):
	// beyond it the least recently used entries are removed when the
	// Runtime starts and after each compile. Default: 1 GiB.
	CacheMaxBytes int64
	// CompileWorkers is wazero's parallelism for one compilation.
	// Default: 1.
	CompileWorkers int
	// MemoryLimitPages caps each instance's linear memory, in 64 KiB pages;
	// growing past it fails (ErrMemory). It applies to every guest of the
	// Runtime: use one Runtime per limit (they may share CacheDir) for
	// per-guest limits. At most 32768 (2 GiB: the ABI packs pointers into
	// the sign-free half of an i64). Default: 4096 (256 MiB).
	MemoryLimitPages uint32
	// CallTimeout bounds one entry point call (the caller's context may
	// end it sooner). Default: 5s.
	CallTimeout time.Duration
	// InitTimeout bounds creating an instance: _initialize, the ABI checks
	// and format_load. Default: 30s.
	InitTimeout time.Duration
	// MaxOutputBytes is the largest tensor list a guest may return.
	// Default: 64 MiB.
	MaxOutputBytes uint32
	// OutputBytes is how much of each call's stdout and of its stderr an
	// instance keeps for the log. Default: 64 KiB.
	OutputBytes int
	// Limits bound each instance's host tensors (cyxwiz.Limits defaults).
	Limits cyxwiz.Limits
}

func (c Config) withDefaults() Config {
	if c.CacheMaxBytes <= 0 {
		c.CacheMaxBytes = 1 << 30
	}
	if c.CompileWorkers <= 0 {
		c.CompileWorkers = 1
	}
	if c.MemoryLimitPages == 0 {
		c.MemoryLimitPages = 4096
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 5 * time.Second
	}
	if c.InitTimeout <= 0 {
		c.InitTimeout = 30 * time.Second
	}
	if c.MaxOutputBytes == 0 {
		c.MaxOutputBytes = 64 << 20
	}
	if c.OutputBytes <= 0 {
		c.OutputBytes = 64 << 10
	}
	return c
}

// MaxInstances bounds the instances of one pool: each may hold its memory
// limit of guest memory, and calls beyond the cores only queue.
const MaxInstances = 256

// Validate reports configuration errors.
func (c Config) Validate() error {
	var errs []error
	if c.MemoryLimitPages > 32768 {
		errs = append(errs, fmt.Errorf("guest.memory_limit_pages: %d is over 32768 (2 GiB)", c.MemoryLimitPages))
	}
	if c.MaxOutputBytes > 1<<31-1 {
		errs = append(errs, fmt.Errorf("guest.max_output_bytes: %d is over 2 GiB", c.MaxOutputBytes))
	}
	return errors.Join(errs...)
}

// Runtime compiles and runs guest modules: one per node (or per memory
// limit). It holds a wazero runtime with the WASI and "cyxwiz" host
// modules, and the compiled modules by digest.
type Runtime struct {
	cfg   Config
	log   *slog.Logger
	r     wazero.Runtime
	cache wazero.CompilationCache

	mu      sync.Mutex
	modules map[moduleKey]*Module

	pruning sync.Mutex // one pruneCache at a time

	closed atomic.Bool // set by Close: compiles and new instances fail with loaders.ErrClosed
}

// moduleKey names a compiled module: its bytes, and the memory limit
// compiled into it (0: the runtime's).
type moduleKey struct {
	digest [32]byte
	pages  uint32
}

// NewRuntime starts a runtime. Guests get no files, sockets, environment
// or arguments; only the clocks of WASI and the "cyxwiz" host functions.
func NewRuntime(ctx context.Context, cfg Config, log *slog.Logger) (*Runtime, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if cfg.CacheDir != "" {
		// wazero names its cache files by absolute path: cacheTrouble
		// compares them with this one, and pruning must find the same
		// folder whatever the working directory becomes.
		abs, err := filepath.Abs(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("guest: compilation cache %s: %w", cfg.CacheDir, err)
		}
		cfg.CacheDir = abs
	}
	rt := &Runtime{cfg: cfg, log: log, modules: make(map[moduleKey]*Module)}
	rc := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(cfg.MemoryLimitPages)
	if cfg.CacheDir != "" {
		rt.pruneCache()
		cache, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("guest: compilation cache %s: %w", cfg.CacheDir, err)
		}
		rt.cache = cache
		rc = rc.WithCompilationCache(cache)
	}
	rt.r = wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt.r); err != nil {
		_ = rt.Close(ctx)
		return nil, fmt.Errorf("guest: instantiate WASI: %w", err)
	}
	if _, err := cyxwiz.Instantiate(ctx, rt.r); err != nil {
		_ = rt.Close(ctx)
		return nil, fmt.Errorf("guest: instantiate %s host module: %w", cyxwiz.ModuleName, err)
	}
	return rt, nil
}

// Close closes every module and instance of the runtime.
func (rt *Runtime) Close(ctx context.Context) error {
	rt.closed.Store(true)
	err := rt.r.Close(ctx)
	if rt.cache != nil {
		err = errors.Join(err, rt.cache.Close(ctx))
	}
	return err
}

// Module is a compiled guest, shared by every pool that runs the same
// bytes. Close it when no longer needed.
type Module struct {
	rt       *Runtime
	key      moduleKey
	digest   [32]byte
	ready    chan struct{} // closed when compiled (or failed)
	compiled wazero.CompiledModule
	err      error
	refs     int // guarded by rt.mu
	abiErr   error
	entries  []abi.Entry
}

// Compile compiles wasm, or returns the module already compiled from the
// same bytes (by SHA-256). Each successful Compile must be matched by a
// Module.Close. A module that is not WebAssembly fails with ErrABI. Its
// instances may grow their memory up to the runtime's limit.
func (rt *Runtime) Compile(ctx context.Context, wasm []byte) (*Module, error) {
	return rt.CompileLimited(ctx, wasm, 0)
}

// MemoryLimitPages is the most memory, in 64 KiB pages, an instance of
// this runtime may have.
func (rt *Runtime) MemoryLimitPages() uint32 { return rt.cfg.MemoryLimitPages }

// CompileLimited is Compile with the guest's own memory limit in pages,
// at most the runtime's (0 means the runtime's): the module's declared
// maximum is lowered to it, so growing past it fails inside the guest
// (ErrMemory at the call). A guest whose initial memory is already larger
// fails to compile with ErrMemory.
func (rt *Runtime) CompileLimited(ctx context.Context, wasm []byte, pages uint32) (*Module, error) {
	if pages >= rt.cfg.MemoryLimitPages {
		pages = 0
	}
	digest := sha256.Sum256(wasm)
	key := moduleKey{digest, pages}
	rt.mu.Lock()
	m, ok := rt.modules[key]
	if ok {
		m.refs++
		rt.mu.Unlock()
		select {
		case <-m.ready:
		case <-ctx.Done():
			m.Close(ctx)
			return nil, fmt.Errorf("guest: compile %x: %w", digest[:6], ctx.Err())
		}
		if m.err != nil {
			m.Close(ctx)
			if errors.Is(m.err, errCompileStopped) && ctx.Err() == nil {
				// The caller that compiled went away, not this one: compile
				// again (the failed module left the table).
				return rt.CompileLimited(ctx, wasm, pages)
			}
			return nil, m.err
		}
		return m, nil
	}
	m = &Module{rt: rt, key: key, digest: digest, ready: make(chan struct{}), refs: 1}
	rt.modules[key] = m
	rt.mu.Unlock()
	fail := func(err error) (*Module, error) {
		m.err = err
		rt.mu.Lock()
		delete(rt.modules, key)
		rt.mu.Unlock()
		close(m.ready)
		return nil, err
	}

	if err := checkModule(wasm); err != nil {
		return fail(fmt.Errorf("guest: compile %x: %w: %w", digest[:6], ErrABI, err))
	}
	if t, err := limitTables(wasm); err != nil {
		if !errors.Is(err, ErrMemory) {
			err = fmt.Errorf("%w: %w", ErrABI, err)
		}
		return fail(fmt.Errorf("guest: compile %x: %w", digest[:6], err))
	} else {
		wasm = t
	}
	if pages > 0 {
		limited, err := limitMemory(wasm, pages)
		if err != nil {
			if !errors.Is(err, ErrMemory) {
				err = fmt.Errorf("%w: %w", ErrABI, err)
			}
			return fail(fmt.Errorf("guest: compile %x with a memory limit of %d pages: %w", digest[:6], pages, err))
		}
		wasm = limited
	} else if _, lo, _, err := memoryLimits(wasm); err == nil {
		// Under the runtime's limit, which wazero applies, the same
		// error as under a guest's own: wazero's says "ABI violation".
		if err := checkInitialMemory(lo, rt.cfg.MemoryLimitPages); err != nil {
			return fail(fmt.Errorf("guest: compile %x with a memory limit of %d pages: %w", digest[:6], rt.cfg.MemoryLimitPages, err))
		}
	}
	start := time.Now()
	cctx := experimental.WithCompilationWorkers(ctx, rt.cfg.CompileWorkers)
	merged, _ := mergeData(wasm) // same module, fewer data segments: faster instances
	var err error
	m.compiled, err = rt.r.CompileModule(cctx, merged)
	if err != nil && (ctx.Err() == nil || cacheWriteFailed(err)) && rt.cacheTrouble(err) {
		// A damaged or vanished compilation cache is not the guest's fault:
		// start the cache afresh and compile once more.
		rt.log.Warn("guest compilation cache unusable; clearing it", "dir", rt.cfg.CacheDir, "err", err)
		if rerr := rt.resetCache(); rerr != nil {
			rt.log.Error("clear guest compilation cache", "dir", rt.cfg.CacheDir, "err", rerr)
		}
		// wazero keeps a module in memory, counted, before it writes its
		// cache entry, and a failed write leaves that count with no
		// CompiledModule to release it; compiled again, the module is
		// found there (no cache read or write) and counted twice. A
		// CompiledModule's Close releases one count of its bytes: the
		// orphaned one is dropped, or the module's code stays for the
		// runtime's life.
		orphaned := cacheWriteFailed(err)
		m.compiled, err = rt.r.CompileModule(cctx, merged)
		if err != nil && !orphaned && cacheWriteFailed(err) {
			// Compiled this time (the first failed reading the cache),
			// and the write failed again (another compile cleared the
			// cache meanwhile).
			orphaned = true
			m.compiled, err = rt.r.CompileModule(cctx, merged)
		}
		if err == nil && orphaned {
			_ = m.compiled.Close(ctx)
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fail(fmt.Errorf("guest: compile %x: %w: %w", digest[:6], errCompileStopped, cerr))
		}
		if rt.closed.Load() { // not the guest's fault: wazero's "runtime closed"
			return fail(fmt.Errorf("guest: compile %x: the guest runtime is closed: %w", digest[:6], loaders.ErrClosed))
		}
		return fail(fmt.Errorf("guest: compile %x: %w: %v", digest[:6], ErrABI, err))
	}
	m.abiErr = checkExports(m.compiled)
	for e := range abi.NumEntries {
		if _, ok := m.compiled.ExportedFunctions()[e.String()]; ok {
			m.entries = append(m.entries, e)
		}
	}
	close(m.ready)
	rt.log.Debug("guest compiled", "digest", m.Digest(), "took", time.Since(start))
	rt.pruneCache() // the compile may have added an entry
	return m, nil
}

// errCompileStopped marks a compilation its caller's context stopped: the
// others waiting for it compile again rather than fail.
var errCompileStopped = errors.New("compilation stopped")

// cacheTrouble reports whether a compile error comes from the compilation
// cache (a truncated entry, a directory removed under the node) rather than
// from the module.
func (rt *Runtime) cacheTrouble(err error) bool {
	if rt.cfg.CacheDir == "" {
		return false
	}
	// Only wazero's own cache errors, or a file error under the cache: a
	// module's error may quote any text (an export named
	// "compilationcache" cleared the cache at will).
	if strings.HasPrefix(err.Error(), "compilationcache") {
		return true
	}
	under := func(p string) bool {
		return strings.HasPrefix(filepath.Clean(p), filepath.Clean(rt.cfg.CacheDir)+string(filepath.Separator))
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && under(pe.Path) {
		return true
	}
	// The rename of a new entry into place, whose temporary file a
	// resetCache of another compile removed.
	var le *os.LinkError
	return errors.As(err, &le) && under(le.New)
}

// cacheWriteFailed reports whether a compile error is wazero's failure to
// write the cache entry of a module it compiled (and already holds): the
// temporary file it writes first, or its rename into place.
func cacheWriteFailed(err error) bool {
	var le *os.LinkError
	if errors.As(err, &le) {
		return true
	}
	var pe *fs.PathError
	return errors.As(err, &pe) && strings.HasSuffix(pe.Path, ".tmp")
}

// pruneCache keeps the compilation cache within Config.CacheMaxBytes. A
// cache it cannot prune is still used: the trouble is logged.
func (rt *Runtime) pruneCache() {
	if rt.cfg.CacheDir == "" {
		return
	}
	rt.pruning.Lock()
	defer rt.pruning.Unlock()
	if err := pruneCache(rt.cfg.CacheDir, rt.cfg.CacheMaxBytes, rt.log); err != nil {
		rt.log.Warn("prune guest compilation cache", "dir", rt.cfg.CacheDir, "err", err)
	}
}

// resetCache deletes the compiled guests in the cache directory (the
// node's own: cache_dir/wasm), whatever they are (a folder where an
// entry's file belongs fails every read of it as surely as a truncated
// file), and makes its folders again where they are gone; the runtime's
// cache keeps writing there.
func (rt *Runtime) resetCache() error {
	entries, err := os.ReadDir(rt.cfg.CacheDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var errs []error
	for _, e := range entries {
		// RemoveAll: nil when another compile's reset removed it first.
		errs = append(errs, os.RemoveAll(filepath.Join(rt.cfg.CacheDir, e.Name())))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Making a cache over the folder makes its versioned subfolder.
	c, err := wazero.NewCompilationCacheWithDir(rt.cfg.CacheDir)
	if err != nil {
		return err
	}
	return c.Close(context.Background())
}

// Digest is the hex SHA-256 of the module's bytes.
func (m *Module) Digest() string { return hex.EncodeToString(m.digest[:]) }

// Entries lists the entry points the module exports. A guest built with
// guests/sdk exports all of them and says at run time which it implements
// (Pool.Entries).
func (m *Module) Entries() []abi.Entry { return slices.Clone(m.entries) }

// ABI reports, wrapping ErrABI, what in the module's exports and imports
// breaks guest ABI v1. The version a guest returns is checked when an
// instance starts (NewPool).
func (m *Module) ABI() error { return m.abiErr }

// Close releases one reference; the last one frees the compiled code.
func (m *Module) Close(ctx context.Context) error {
	rt := m.rt
	rt.mu.Lock()
	m.refs--
	last := m.refs == 0
	if last && rt.modules[m.key] == m {
		delete(rt.modules, m.key)
	}
	rt.mu.Unlock()
	if last && m.compiled != nil {
		return m.compiled.Close(ctx)
	}
	return nil
}

func (m *Module) acquire() {
	m.rt.mu.Lock()
	m.refs++
	m.rt.mu.Unlock()
}

var (
	sigVoid  = signature{}
	sigI32   = signature{nil, []api.ValueType{api.ValueTypeI32}}
	sigAlloc = signature{[]api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}}
	sigEntry = signature{[]api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI64}}
)

type signature struct{ params, results []api.ValueType }

func (s signature) of(d api.FunctionDefinition) bool {
	return slices.Equal(s.params, d.ParamTypes()) && slices.Equal(s.results, d.ResultTypes())
}

func (s signature) String() string { return fmt.Sprintf("%v -> %v", s.params, s.results) }

// checkExports checks what can be seen without running the module.
func checkExports(c wazero.CompiledModule) error {
	var errs []error
	exports := c.ExportedFunctions()
	want := func(name string, sig signature, required bool) {
		d, ok := exports[name]
		switch {
		case !ok && required:
			errs = append(errs, fmt.Errorf("missing export %s (%v)", name, sig))
		case ok && !sig.of(d):
			errs = append(errs, fmt.Errorf("export %s is %v -> %v, want %v", name, d.ParamTypes(), d.ResultTypes(), sig))
		}
	}
	want(abi.ExportVersion, sigI32, true)
	want(abi.ExportAlloc, sigAlloc, true)
	want(abi.ExportEntries, sigI32, false)
	want(abi.ExportInit, sigVoid, false)
	for e := range abi.NumEntries {
		want(e.String(), sigEntry, false)
	}
	if _, ok := c.ExportedMemories()[abi.ExportMemory]; !ok {
		errs = append(errs, fmt.Errorf("missing exported memory %q", abi.ExportMemory))
	}
	if _, ok := exports["_start"]; ok {
		if _, ok := exports[abi.ExportInit]; !ok {
			errs = append(errs, errors.New("a command module (exports _start): build a reactor (go build -buildmode=c-shared)"))
		}
	}
	for _, d := range c.ImportedFunctions() {
		mod, name, _ := d.Import()
		if mod != wasi_snapshot_preview1.ModuleName && mod != cyxwiz.ModuleName {
			errs = append(errs, fmt.Errorf("imports %s.%s: only %s and %s are provided", mod, name, wasi_snapshot_preview1.ModuleName, cyxwiz.ModuleName))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("guest: %w: %w", ErrABI, errors.Join(errs...))
}
