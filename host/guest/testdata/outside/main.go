// Command outside calls host functions where the ABI says they get
// ENOCALL: in its Go init (the module's _initialize), in
// cyxwiz_abi_version, cyxwiz_entries and cyxwiz_alloc. Its preprocess
// returns what each of those calls returned (INT32 "rc": init's
// tensor_new, init's config_get, version, entries, alloc), then its own
// tensor_new's, which must work.
package main

import (
	"encoding/binary"
	"unsafe"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
)

func main() {}

//go:wasmimport cyxwiz tensor_new
func tensorNew(np, nn, dt, sp, rank, dp, dn uint32) int32

//go:wasmimport cyxwiz tensor_pin
func tensorPin(h uint32) int32

//go:wasmimport cyxwiz config_get
func configGet(kp, kn, op, oc uint32) int32

func addr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

// newPinned makes a pinned 1 MiB host tensor: what leaked from outside a
// call would hold memory until the instance is thrown away.
func newPinned() int32 {
	h := newTensor()
	if h > 0 {
		tensorPin(uint32(h))
	}
	return h
}

func newTensor() int32 {
	name := []byte("x")
	shape := binary.LittleEndian.AppendUint64(nil, 1<<18)
	return tensorNew(addr(name), 1, abi.DTypeFP32, addr(shape), 1, addr(data), uint32(len(data)))
}

var (
	data = make([]byte, 1<<20)
	rc   [6]int32
	in   []byte
	out  []byte
)

func init() {
	rc[0] = newPinned()
	k, v := []byte("mode"), make([]byte, 16)
	rc[1] = configGet(addr(k), uint32(len(k)), addr(v), uint32(len(v)))
}

//go:wasmexport cyxwiz_abi_version
func version() int32 {
	rc[2] = newPinned()
	return abi.Version
}

//go:wasmexport cyxwiz_entries
func entries() int32 {
	rc[3] = newPinned()
	return int32(abi.Preprocess.Bit())
}

//go:wasmexport cyxwiz_alloc
func alloc(n int32) uint32 {
	rc[4] = newPinned()
	in = make([]byte, max(n, 1))
	return addr(in)
}

//go:wasmexport preprocess
func preprocess(_ uint32, _ int32) int64 {
	rc[5] = newTensor() // freed at the end of the call
	b := make([]byte, 4*len(rc))
	for i, c := range rc {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(c))
	}
	out = abi.Encode(out[:0], []abi.Tensor{{Name: "rc", DType: abi.DTypeInt32, Shape: []int64{int64(len(rc))}, Data: b}})
	return abi.Pack(addr(out), uint32(len(out)))
}
