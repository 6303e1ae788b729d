package guest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// zzVectorBombs are modules of about 15 bytes: one section whose vector
// count is 2^32-1 and which holds nothing else. wazero's decoder makes a
// slice of that many entries before reading the first one.
var zzVectorBombs = map[string]byte{
	"import": 2, "function": 3, "table": 4, "global": 6, "export": 7,
	"element": 9, "code": 10, "data": 11,
}

func zzVectorBomb(section byte) []byte {
	return []byte{0, 'a', 's', 'm', 1, 0, 0, 0, section, 5, 0xff, 0xff, 0xff, 0xff, 0x0f}
}

// A 15-byte guest must fail to compile (ErrABI), not take the node down
// ("fatal error: runtime: out of memory", which no recover can catch).
func TestVectorCountBombRefused(t *testing.T) {
	for name, section := range zzVectorBombs {
		t.Run(name, func(t *testing.T) {
			r := compileInChild(t, zzVectorBomb(section))
			t.Logf("%s section count 2^32-1 (%d bytes): %s", name, len(zzVectorBomb(section)), r.line)
			if r.mib > 64 || !r.abi {
				t.Fatalf("compile allocated %d MiB (ErrABI %v) for a 15-byte module", r.mib, r.abi)
			}
		})
	}
}

// One function declaring 2^23 locals (an 8-byte code entry) is refused:
// wazero compiles each local (~28 bytes and an SSA instruction apiece), and
// 2^32-1 of them (the most its decoder accepts) is ~120 GiB.
func TestLocalsBombRefused(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	m.addFunc(3, zzCat([]byte{1}, zzU(1<<23), []byte{0x7f, 0x0b}))
	compileBounded(t, m.bytes(), "")
}

// compileBounded compiles wasm on a runtime without a cache (a real
// compile) and fails t when the compile succeeded after making the host
// allocate more than 64 MiB; why names the check that should have stopped it.
func compileBounded(t *testing.T, wasm []byte, why string) {
	t.Helper()
	rt, err := guest.NewRuntime(context.Background(), guest.Config{}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	mod, err := rt.Compile(context.Background(), wasm)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if mod != nil {
		mod.Close(context.Background())
	}
	alloc := (after.TotalAlloc - before.TotalAlloc) >> 20
	t.Logf("%d-byte module: err %v, compile took %v and allocated %d MiB", len(wasm), err, took, alloc)
	if err == nil && alloc > 64 {
		t.Fatalf("a %d-byte guest made the host allocate %d MiB (%v) to compile it%s", len(wasm), alloc, took, why)
	}
}

// Tables are bounded (table.grow is not bound by memory_limit_pages): a
// guest limited to 1 MiB of memory grew its funcref table by 2^25 entries,
// 256 MiB of host memory kept in its instance.
func TestTableGrowBounded(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	m.tables = [][]byte{{0x70, 0x00, 0x00}} // funcref, min 0, no maximum
	pre := m.addFunc(2, zzCat(
		[]byte{0},
		[]byte{0xd2, 0}, // ref.func 0 (cyxwiz_abi_version)
		[]byte{0x41}, zzS(1<<25),
		[]byte{0xfc, 15, 0}, // table.grow 0
		[]byte{0x1a},        // drop
		zzReturnGuestError(0, 4),
	))
	m.export("preprocess", 0x00, pre)
	rt := newRuntime(t, guest.Config{MemoryLimitPages: 16, CacheDir: t.TempDir()})
	mod, err := rt.Compile(context.Background(), m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(context.Background())
	p, err := rt.NewPool(context.Background(), mod, guest.PoolConfig{Name: "tables"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = p.Preprocess(context.Background(), nil)
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := (int64(after.HeapInuse) - int64(before.HeapInuse)) >> 20
	t.Logf("call: %v; host heap in use grew by %d MiB and stays with the idle instance", err, grew)
	if grew > 32 {
		t.Fatalf("a guest limited to 16 pages (1 MiB) holds %d MiB of host memory", grew)
	}
}

// random_get reads the system's source: wazero's default is a fixed seed,
// the same "random" bytes in every instance on every node (Go guests'
// crypto/rand, map seeds, math/rand).
func TestRandomNotDeterministic(t *testing.T) {
	m := &zzModule{}
	rg := m.importFunc("wasi_snapshot_preview1", "random_get", 4)
	zzABIGuest(m)
	pre := m.addFunc(2, zzCat(
		[]byte{0},
		[]byte{0x41, 0, 0x41, 16, 0x10}, zzU(uint64(rg)), []byte{0x1a}, // random_get(0, 16); drop
		zzReturnGuestError(0, 16),
	))
	m.export("preprocess", 0x00, pre)
	wasm := m.bytes()
	read := func() string {
		rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
		mod, err := rt.Compile(context.Background(), wasm)
		if err != nil {
			t.Fatal(err)
		}
		defer mod.Close(context.Background())
		p, err := rt.NewPool(context.Background(), mod, guest.PoolConfig{Name: "rand"})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(context.Background())
		_, err = p.Preprocess(context.Background(), nil)
		if !errors.Is(err, guest.ErrGuest) {
			t.Fatalf("err = %v", err)
		}
		s := err.Error()
		return s[strings.LastIndex(s, "error: ")+7:]
	}
	a, b := read(), read()
	t.Logf("random_get in two runtimes: %x and %x", a, b)
	if a == b {
		t.Fatalf("two separate instances read the same 16 random bytes %x", a)
	}
}

// A module whose compile error quotes "compilationcache" (an export name
// is enough) is not taken for a damaged cache: the node deleted every
// compiled guest in cache_dir.
func TestBadModuleKeepsCompilationCache(t *testing.T) {
	dir := t.TempDir()
	rt := newRuntime(t, guest.Config{CacheDir: dir})
	good := &zzModule{}
	zzABIGuest(good)
	mod, err := rt.Compile(context.Background(), good.bytes())
	if err != nil {
		t.Fatal(err)
	}
	mod.Close(context.Background())
	files := func() (n int) {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n++
			}
			return nil
		})
		return n
	}
	before := files()
	if before == 0 {
		t.Fatal("no cache entry written")
	}
	bad := &zzModule{}
	zzABIGuest(bad)
	bad.export("compilationcache", 0x00, 0)
	bad.export("compilationcache", 0x00, 0)
	if _, err := rt.Compile(context.Background(), bad.bytes()); !errors.Is(err, guest.ErrABI) {
		t.Fatalf("err = %v, want ErrABI", err)
	}
	if after := files(); after < before {
		t.Fatalf("a malformed guest deleted the compilation cache: %d files, then %d", before, after)
	}
}

// random_get stops at the call's deadline: filled in one host call, 256
// MiB held the host well past a 20 ms deadline.
func TestRandomGetStopsAtDeadline(t *testing.T) {
	m := &zzModule{}
	rg := m.importFunc("wasi_snapshot_preview1", "random_get", 4)
	zzABIGuest(m)
	m.memory = zzCat([]byte{0x00}, zzU(4096)) // 256 MiB from the start
	pre := m.addFunc(2, zzCat(
		[]byte{0},
		[]byte{0x41, 0, 0x41}, zzS(256<<20-1), []byte{0x10}, zzU(uint64(rg)), []byte{0x1a},
		zzReturnGuestError(0, 4),
	))
	m.export("preprocess", 0x00, pre)
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	mod, err := rt.Compile(context.Background(), m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(context.Background())
	p, err := rt.NewPool(context.Background(), mod, guest.PoolConfig{Name: "slow-random", CallTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	start := time.Now()
	_, err = p.Preprocess(context.Background(), []*tensor.Tensor{})
	took := time.Since(start)
	t.Logf("call with a 20 ms deadline: %v after %v", err, took)
	if took > 200*time.Millisecond {
		t.Fatalf("the call held the host %v past a 20 ms deadline", took)
	}
}

// Nested loops cost wazero's compiler superlinear time (2,000 nested
// loops 80 ms, 8,000 1.1 s, 16,000 7.3 s on this machine), and compiling
// one function does not stop when the caller's context ends: a 36 KB guest
// holds a core for seconds past its compile deadline, a few hundred KB for
// minutes.

// A start section and a data count section (which clang and rustc write
// with bulk memory, on by default) are valid WebAssembly: the module check
// refused both as "1 trailing bytes", so such a guest could not deploy.
func TestStartAndDataCountSectionsAccepted(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	start := m.addFunc(3, []byte{0, 0x0b})
	for _, tc := range []struct {
		name             string
		start, dataCount []byte
	}{
		{"start", zzU(uint64(start)), nil},
		{"data count", nil, zzU(0)},
		{"both", zzU(uint64(start)), zzU(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.start, m.dataCount = tc.start, tc.dataCount
			rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
			mod, err := rt.Compile(context.Background(), m.bytes())
			if err != nil {
				t.Fatal(err)
			}
			defer mod.Close(context.Background())
			p, err := rt.NewPool(context.Background(), mod, guest.PoolConfig{Name: "sections"})
			if err != nil {
				t.Fatal(err)
			}
			p.Close(context.Background())
		})
	}
}
