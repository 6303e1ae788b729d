package guest_test

import "testing"

// Typed references (0x63 ht / 0x64 ht, two bytes) are refused: read as one
// byte they shifted checkModule by a byte, so (local (ref null func)) hid
// the 2^23 locals that followed from the locals bound.
func TestLocalsBombBehindRefTypeRefused(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	m.addFunc(3, zzCat(
		[]byte{2},                // two local declarations
		[]byte{1, 0x63, 0x70},    // 1 x (ref null func)
		zzU(1<<23), []byte{0x7f}, // 2^23 x i32
		[]byte{0x0b},
	))
	compileBounded(t, m.bytes(), ": the maxLocals check was bypassed")
}

// The same shift with 2^32-2 more locals killed the node (wazero makes a
// []wasm.ValueType of that capacity first). Runs in a child process capped
// at 8 GiB of address space.
func TestHugeLocalsBehindRefTypeRefused(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	m.addFunc(3, zzCat([]byte{2}, []byte{1, 0x63, 0x70}, zzU(1<<32-2), []byte{0x7f}, []byte{0x0b}))
	t.Logf("child: %s", compileInChild(t, m.bytes()).line)
}

// The same shift in the type section hides a vector bomb of the kind
// checkModule exists to stop. Type 0 is (func (param (ref null func))),
// 0x60 1 0x63 0x70 0: checkModule skips one byte for the one parameter and
// reads the result count from the heap type 0x70 (112), skipping the next
// 112 bytes, where type 1 declares 2^32-1 parameters. wazero's
// decodeValueTypes makes a []ValueType of that capacity (32 GiB) first.
func TestTypeSectionBombBehindRefTypeRefused(t *testing.T) {
	t.Logf("child (%d-byte module): %s", len(typeBomb()), compileInChild(t, typeBomb()).line)
}

func typeBomb() []byte {
	hidden := zzCat([]byte{0x60}, zzU(1<<32-1)) // type 1 as wazero reads it
	types := zzCat(
		[]byte{2},                      // two types
		[]byte{0x60, 1, 0x63, 0x70, 0}, // type 0
		hidden,
		// with type 0's last byte and hidden, the 112 bytes checkModule
		// skips; then 3 more that it reads as type 1: 0x00, 0 params, 0 results
		make([]byte, 112-1-len(hidden)+3),
	)
	body := zzCat(zzU(uint64(len(types))), types)
	return zzCat([]byte("\x00asm\x01\x00\x00\x00"), []byte{1}, body)
}
