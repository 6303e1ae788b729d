package guest_test

import (
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// zzInsertSection returns wasm with section id (body) put where the
// binary format's order wants it: before the first section that comes
// after it (the data count section, 12, goes before code, 10).
func zzInsertSection(wasm []byte, id byte, body []byte) []byte {
	rank := func(id byte) int {
		if id == 12 {
			return 95 // between element (9) and code (10)
		}
		return int(id) * 10
	}
	sec := zzCat([]byte{id}, zzU(uint64(len(body))), body)
	for pos := 8; pos < len(wasm); {
		size, n := binary.Uvarint(wasm[pos+1:])
		if wasm[pos] != 0 && rank(wasm[pos]) > rank(id) {
			return zzCat(wasm[:pos], sec, wasm[pos:])
		}
		pos += 1 + n + int(size)
	}
	return append(wasm, sec...)
}

// Every instance copies a module's globals, data segments and passive
// element segments on the host, outside memory_limit_pages: a 2 MB guest
// of 2 million passive element entries held 80 MiB an instance (~40 bytes
// an entry), one of 400,000 globals 34 MiB, one of a million empty passive
// data segments 22 MiB. Such a module is refused at compile time.
func TestInstanceHostMemoryBounded(t *testing.T) {
	bombs := map[string]func() []byte{
		"globals": func() []byte {
			m := &zzModule{}
			zzABIGuest(m)
			var gs [][]byte
			for range 400_000 {
				gs = append(gs, []byte{0x7f, 1, 0x41, 0, 0x0b}) // mut i32 = 0
			}
			return zzInsertSection(m.bytes(), 6, zzVec(gs))
		},
		"passive elements": func() []byte {
			m := &zzModule{}
			zzABIGuest(m)
			m.addFunc(3, []byte{0, 0x0b})
			const n = 2_000_000
			seg := zzCat([]byte{1, 0x00}, zzU(n), make([]byte, n)) // passive funcref, n × function 0
			return zzInsertSection(m.bytes(), 9, zzVec([][]byte{seg}))
		},
		"passive data": func() []byte {
			m := &zzModule{}
			zzABIGuest(m)
			for range 1_000_000 {
				m.data = append(m.data, []byte{1, 0}) // passive, empty
			}
			return m.bytes()
		},
	}
	for name, build := range bombs {
		t.Run(name, func(t *testing.T) {
			wasm := build()
			rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
			ctx := context.Background()
			mod, err := rt.Compile(ctx, wasm)
			if err != nil {
				if !errors.Is(err, guest.ErrABI) {
					t.Fatalf("compile: %v, want ErrABI", err)
				}
				t.Logf("%d-byte module refused: %v", len(wasm), err)
				return
			}
			defer mod.Close(ctx)
			const n = 4
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: name, Instances: n, Eager: true})
			if err != nil {
				t.Fatalf("NewPool: %v", err)
			}
			defer p.Close(ctx)
			runtime.GC()
			runtime.ReadMemStats(&after)
			held := (int64(after.HeapInuse) - int64(before.HeapInuse)) >> 20
			t.Logf("%d instances of a %d-byte module hold %d MiB", n, len(wasm), held)
			if held > 32 {
				t.Fatalf("%d instances of a %d-byte module hold %d MiB on the host, outside their memory limit", n, len(wasm), held)
			}
		})
	}
}

// zzTypeBomb is a guest whose type section adds n function types, twelve
// parameters each, different for every seed.
func zzTypeBomb(seed, n int) []byte {
	m := &zzModule{}
	zzABIGuest(m)
	types := slices.Clone(zzTypes)
	vt := []byte{0x7f, 0x7e, 0x7d, 0x7c}
	for i := range n {
		x := seed*n + i
		params := make([]byte, 12)
		for k := range params {
			params[k] = vt[x%4]
			x /= 4
		}
		types = append(types, zzCat([]byte{0x60}, zzU(uint64(len(params))), params, []byte{0}))
	}
	wasm := m.bytes()
	size, n0 := binary.Uvarint(wasm[9:]) // the type section comes first
	body := zzVec(types)
	return zzCat(wasm[:8], []byte{1}, zzU(uint64(len(body))), body, wasm[9+n0+int(size):])
}

// wazero gives each distinct function type an ID in a table of the runtime
// that is never shrunk: guests of 200,000 new types each left ~20 MiB on
// the node per compile, after their Close.
func TestCompileLeavesNothingBehind(t *testing.T) {
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	ctx := context.Background()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for seed := range 2 {
		mod, err := rt.Compile(ctx, zzTypeBomb(seed, 200_000))
		if err != nil {
			if !errors.Is(err, guest.ErrABI) {
				t.Fatalf("compile: %v, want ErrABI", err)
			}
			continue
		}
		mod.Close(ctx)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if kept := (int64(after.HeapInuse) - int64(before.HeapInuse)) >> 20; kept > 8 {
		t.Fatalf("two guests compiled and closed left %d MiB on the host", kept)
	}
}
