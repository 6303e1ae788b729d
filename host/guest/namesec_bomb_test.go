package guest_test

import (
	"testing"
)

// nameBombs are modules of about 25 bytes whose only section is a
// custom "name" section: a function-names (1) or local-names (2)
// subsection whose count is 2^32-1. checkModule skips custom sections, but
// wazero's decodeNameSection does make(wasm.NameMap, count) (24 bytes an
// entry: 96 GiB) before reading the first entry, exactly like the vector
// bombs checkModule was written to stop.
var nameBombs = map[string][]byte{
	"function-names": nameSection(1, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}),
	// one function (index 0) with 2^32-1 local names
	"local-names": nameSection(2, []byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}),
}

func nameSection(sub byte, payload []byte) []byte {
	body := zzCat(zzName("name"), []byte{sub}, zzU(uint64(len(payload))), payload)
	return zzCat([]byte("\x00asm\x01\x00\x00\x00"), []byte{0}, zzU(uint64(len(body))), body)
}

// A 25-byte guest with a hostile name section must fail to compile (or
// compile), not take the node down with a fatal out-of-memory.
func TestNameSectionBombRefused(t *testing.T) {
	for name, wasm := range nameBombs {
		t.Run(name, func(t *testing.T) {
			r := compileInChild(t, wasm)
			t.Logf("%s count 2^32-1 (%d-byte module): %s", name, len(wasm), r.line)
			if r.mib > 64 {
				t.Fatalf("compile allocated %d MiB for a %d-byte module", r.mib, len(wasm))
			}
		})
	}
}
