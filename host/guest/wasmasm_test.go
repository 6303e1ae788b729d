package guest_test

// A tiny WebAssembly assembler for the review tests: enough to write
// hostile guests byte by byte (no wat2wasm here).

import (
	"encoding/binary"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
)

func zzU(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func zzS(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func zzName(s string) []byte { return append(zzU(uint64(len(s))), s...) }

func zzVec(items [][]byte) []byte {
	out := zzU(uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

func zzCat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// zzModule is a module under construction. Types 0..4 are fixed:
// 0 () -> i32, 1 (i32) -> i32, 2 (i32, i32) -> i64, 3 () -> (), 4 (i32, i32) -> i32.
type zzModule struct {
	imports  [][]byte
	nImports uint32 // imported functions
	funcs    [][]byte
	codes    [][]byte
	tables   [][]byte
	exports  [][]byte
	start    []byte
	memory   []byte
	// dataCount, when set, is the contents of a data count section.
	dataCount []byte
	data      [][]byte // active data segments of memory 0 (zzData)
}

// zzData is an active data segment writing b at offset.
func zzData(offset uint32, b []byte) []byte {
	return zzCat([]byte{0, 0x41}, zzS(int64(offset)), []byte{0x0b}, zzU(uint64(len(b))), b)
}

var zzTypes = [][]byte{
	{0x60, 0, 1, 0x7f},
	{0x60, 1, 0x7f, 1, 0x7f},
	{0x60, 2, 0x7f, 0x7f, 1, 0x7e},
	{0x60, 0, 0},
	{0x60, 2, 0x7f, 0x7f, 1, 0x7f},
}

// importFunc imports mod.name of type typ; call before addFunc.
func (m *zzModule) importFunc(mod, name string, typ byte) uint32 {
	m.imports = append(m.imports, zzCat(zzName(mod), zzName(name), []byte{0x00, typ}))
	m.nImports++
	return m.nImports - 1
}

// addFunc adds a function of type typ whose code entry (locals and body,
// without the size) is code, and returns its index.
func (m *zzModule) addFunc(typ byte, code []byte) uint32 {
	m.funcs = append(m.funcs, []byte{typ})
	m.codes = append(m.codes, zzCat(zzU(uint64(len(code))), code))
	return m.nImports + uint32(len(m.funcs)) - 1
}

func (m *zzModule) export(name string, kind byte, idx uint32) {
	m.exports = append(m.exports, zzCat(zzName(name), []byte{kind}, zzU(uint64(idx))))
}

func (m *zzModule) bytes() []byte {
	sec := func(id byte, body []byte) []byte { return zzCat([]byte{id}, zzU(uint64(len(body))), body) }
	out := []byte("\x00asm\x01\x00\x00\x00")
	out = append(out, sec(1, zzVec(zzTypes))...)
	if len(m.imports) > 0 {
		out = append(out, sec(2, zzVec(m.imports))...)
	}
	out = append(out, sec(3, zzVec(m.funcs))...)
	if len(m.tables) > 0 {
		out = append(out, sec(4, zzVec(m.tables))...)
	}
	mem := m.memory
	if mem == nil {
		mem = []byte{0x00, 1} // 1 page, no maximum
	}
	out = append(out, sec(5, zzVec([][]byte{mem}))...)
	out = append(out, sec(7, zzVec(m.exports))...)
	if m.start != nil {
		out = append(out, sec(8, m.start)...)
	}
	if m.dataCount != nil {
		out = append(out, sec(12, m.dataCount)...)
	}
	out = append(out, sec(10, zzVec(m.codes))...)
	if len(m.data) > 0 {
		out = append(out, sec(11, zzVec(m.data))...)
	}
	return out
}

// zzABIGuest is a guest of ABI v1 with the memory, cyxwiz_abi_version and
// cyxwiz_alloc (always 1024); the caller adds preprocess.
func zzABIGuest(m *zzModule) {
	v := m.addFunc(0, zzCat([]byte{0}, []byte{0x41}, zzS(abi.Version), []byte{0x0b}))
	a := m.addFunc(1, zzCat([]byte{0}, []byte{0x41}, zzS(1024), []byte{0x0b}))
	m.export(abi.ExportMemory, 0x02, 0)
	m.export(abi.ExportVersion, 0x00, v)
	m.export(abi.ExportAlloc, 0x00, a)
}

// zzReturnGuestError is code that returns the ErrGuest value for the
// message of n bytes at ptr.
func zzReturnGuestError(ptr, n uint32) []byte {
	return zzCat([]byte{0x42}, zzS(-abi.Pack(ptr, n)), []byte{0x0b})
}
