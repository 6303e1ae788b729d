package guest

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
)

// instantiateMemory instantiates wasm without running anything and returns
// a copy of its memory: what the data segments wrote.
func instantiateMemory(t *testing.T, wasm []byte) []byte {
	t.Helper()
	ctx := context.Background()
	r := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer r.Close(ctx)
	cm, err := r.CompileModule(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range cm.ImportedFunctions() {
		mod, name, _ := imp.Import()
		b := r.NewHostModuleBuilder(mod)
		_ = name
		// Imports only need to exist: nothing runs.
		for _, f := range cm.ImportedFunctions() {
			if m, n, _ := f.Import(); m == mod {
				b.NewFunctionBuilder().WithGoModuleFunction(nopFunc{}, f.ParamTypes(), f.ResultTypes()).Export(n)
			}
		}
		if r.Module(mod) == nil {
			if _, err := b.Instantiate(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	mod, err := r.InstantiateModule(ctx, cm, wazero.NewModuleConfig().WithStartFunctions().WithName(""))
	if err != nil {
		t.Fatal(err)
	}
	mem, _ := mod.Memory().Read(0, mod.Memory().Size())
	return bytes.Clone(mem)
}

func TestMergeDataKeepsMemory(t *testing.T) {
	for _, dir := range []string{"guests/examples/cls-post", "host/guest/testdata/raw"} {
		t.Run(dir, func(t *testing.T) {
			wasm := guesttest.Build(t, dir)
			merged, changed := mergeData(wasm)
			if !changed {
				t.Fatal("a Go guest's data section was not merged")
			}
			before, _ := parseData(dataSection(t, wasm))
			after, _ := parseData(dataSection(t, merged))
			t.Logf("%d data segments → %d; %d → %d bytes", len(before), len(after), len(wasm), len(merged))
			if len(after) >= len(before)/100 {
				t.Fatalf("%d segments left of %d", len(after), len(before))
			}
			if !bytes.Equal(instantiateMemory(t, wasm), instantiateMemory(t, merged)) {
				t.Fatal("merged module starts with different memory")
			}
		})
	}
}

func dataSection(t *testing.T, wasm []byte) []byte {
	t.Helper()
	secs, err := sections(wasm)
	if err != nil {
		t.Fatal(err)
	}
	data, ok := find(secs, sectionData)
	if !ok {
		t.Fatal("no data section")
	}
	return wasm[data.start:data.end]
}

func TestMergeDataLeavesOthersAlone(t *testing.T) {
	seg := func(off int32, data ...byte) []byte {
		b := []byte{0, opI32Const}
		b = appendSleb32(b, off)
		b = append(b, opEnd, byte(len(data)))
		return append(b, data...)
	}
	module := func(sections ...[]byte) []byte {
		out := []byte("\x00asm\x01\x00\x00\x00")
		for _, s := range sections {
			out = append(out, s...)
		}
		return out
	}
	dataSec := func(segs ...[]byte) []byte {
		body := []byte{byte(len(segs))}
		for _, s := range segs {
			body = append(body, s...)
		}
		return append([]byte{sectionData, byte(len(body))}, body...)
	}
	cases := map[string][]byte{
		"not wasm":         []byte("hello"),
		"overlapping":      module(dataSec(seg(0, 1, 2, 3), seg(2, 9))),
		"overlap unsorted": module(dataSec(seg(8, 1), seg(0, 1, 2, 3, 4, 5, 6, 7, 8, 9))),
		"passive":          module(dataSec(seg(0, 1), []byte{1, 1, 7})),
		"data count":       module([]byte{sectionDataCount, 1, 2}, dataSec(seg(0, 1), seg(1, 2))),
		"truncated":        module(dataSec(seg(0, 1), seg(1, 2)))[:20],
		"section too long": append(module(), sectionData, 0x7f, 0),
		"global offset":    module(dataSec([]byte{0, 0x23, 0, opEnd, 1, 5}, seg(4, 1))),
		"one segment":      module(dataSec(seg(0, 1, 2))),
		"far apart":        module(dataSec(seg(0, 1), seg(1<<20, 2))),
	}
	// Empty segments 4 KiB apart: merging would write far more zeros than
	// the module holds data.
	var sparse [][]byte
	for i := range 100 {
		sparse = append(sparse, seg(int32(i*mergeGap)))
	}
	body := []byte{byte(len(sparse))}
	for _, s := range sparse {
		body = append(body, s...)
	}
	cases["mostly gaps"] = module(append([]byte{sectionData, 0x80 | byte(len(body)&0x7f), byte(len(body) >> 7)}, body...))
	for name, wasm := range cases {
		if out, changed := mergeData(wasm); changed || !bytes.Equal(out, wasm) {
			t.Errorf("%s: rewritten", name)
		}
	}
	// Neighbours merge in address order, the gap filled with zeros; negative i32 offsets
	// (addresses >= 2 GiB) survive the round trip.
	in := module(dataSec(seg(20, 3), seg(16, 1, 2), seg(-64, 4)))
	out, changed := mergeData(in)
	if !changed {
		t.Fatal("not merged")
	}
	segs, err := parseData(dataSection(t, out))
	if err != nil || len(segs) != 2 || segs[0].offset != 16 || !bytes.Equal(segs[0].data, []byte{1, 2, 0, 0, 3}) ||
		segs[1].offset != 1<<32-64 || !bytes.Equal(segs[1].data, []byte{4}) {
		t.Fatalf("merged to %+v (%v)", segs, err)
	}
}

func FuzzLimitMemory(f *testing.F) {
	f.Add([]byte("\x00asm\x01\x00\x00\x00\x05\x03\x01\x00\x03"), uint32(10))
	f.Fuzz(func(t *testing.T, wasm []byte, pages uint32) {
		out, err := limitMemory(wasm, pages)
		if err != nil {
			return
		}
		if again, err := limitMemory(out, pages); err != nil || !bytes.Equal(again, out) {
			t.Fatalf("limit is not idempotent: %v", err)
		}
	})
}

func FuzzMergeData(f *testing.F) {
	f.Add([]byte("\x00asm\x01\x00\x00\x00\x0b\x09\x02\x00\x41\x00\x0b\x01\x01\x00\x41\x02\x0b\x01\x02"))
	f.Fuzz(func(t *testing.T, wasm []byte) {
		out, changed := mergeData(wasm)
		if !changed {
			if !bytes.Equal(out, wasm) {
				t.Fatal("unchanged result differs")
			}
			return
		}
		if len(out) > 2*len(wasm)+64 {
			t.Fatalf("%d bytes grew to %d", len(wasm), len(out))
		}
		// A rewritten module rewrites again to itself (or is left alone).
		again, _ := mergeData(out)
		if !bytes.Equal(again, out) {
			t.Fatal("merge is not idempotent")
		}
	})
}

type nopFunc struct{}

func (nopFunc) Call(context.Context, api.Module, []uint64) {}

func TestLimitMemory(t *testing.T) {
	mem := func(body ...byte) []byte {
		return append([]byte("\x00asm\x01\x00\x00\x00"), append([]byte{sectionMemory, byte(len(body))}, body...)...)
	}
	check := func(in []byte, pages uint32, wantMin, wantMax uint64) {
		t.Helper()
		out, err := limitMemory(in, pages)
		if err != nil {
			t.Fatal(err)
		}
		b := out[8+2:]
		if b[0] != 1 || b[1] != 1 || uint64(b[2]) != wantMin || uint64(b[3]) != wantMax {
			t.Fatalf("memory section %x, want min %d max %d", b, wantMin, wantMax)
		}
	}
	check(mem(1, 0, 3), 100, 3, 100)      // no maximum: the limit
	check(mem(1, 1, 3, 50), 100, 3, 50)   // a lower maximum stays
	check(mem(1, 1, 3, 120), 100, 3, 100) // a higher one comes down
	for name, in := range map[string][]byte{
		"not wasm":       []byte("nope"),
		"no memory":      []byte("\x00asm\x01\x00\x00\x00"),
		"two memories":   mem(2, 0, 1, 0, 1),
		"shared":         mem(1, 3, 1, 2),
		"empty section":  mem(),
		"truncated":      mem(1, 1, 3),
		"trailing":       mem(1, 0, 3, 9),
		"section length": append([]byte("\x00asm\x01\x00\x00\x00"), sectionMemory, 9, 1),
	} {
		if _, err := limitMemory(in, 100); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := limitMemory(mem(1, 0, 30), 20); !errors.Is(err, ErrMemory) {
		t.Fatalf("initial memory over the limit: err = %v", err)
	}
}
