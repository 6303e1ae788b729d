// Command raw speaks guest ABI v1 without the SDK, to return what the SDK
// never would: outputs that are too large, outside memory, malformed or
// naming unknown handles, and out-of-bounds pointers to every host function.
package main

import (
	"encoding/binary"
	"unsafe"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
)

func main() {}

var in [1 << 16]byte
var out []byte

func addr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

//go:wasmexport cyxwiz_abi_version
func version() int32 { return abi.Version }

//go:wasmexport cyxwiz_alloc
func alloc(n int32) uint32 {
	if int(n) > len(in) {
		return 0
	}
	return addr(in[:])
}

//go:wasmimport cyxwiz config_get
func configGet(kp, kn, op, oc uint32) int32

// mode is the pool's "mode" config value, read once per instance: the
// echo mode is the benchmark's empty call.
func mode() string {
	if !modeRead {
		modeValue, modeRead = readMode(), true
	}
	return modeValue
}

var (
	modeValue string
	modeRead  bool
)

func readMode() string {
	k := []byte("mode")
	var v [64]byte
	n := configGet(addr(k), uint32(len(k)), addr(v[:]), uint32(len(v)))
	if n < 0 || n > 64 {
		return ""
	}
	return string(v[:n])
}

const bad = 0xffff_fff0 // beyond any guest memory; bad+len wraps

//go:wasmexport preprocess
func preprocess(p uint32, n int32) int64 {
	switch mode() {
	case "huge":
		return abi.Pack(addr(in[:]), 0x7fff_ffff)
	case "oob":
		return abi.Pack(0x7fff_0000, 1024)
	case "garbage":
		copy(in[:], "garbage!")
		return abi.Pack(addr(in[:]), 8)
	case "badhandle":
		out = abi.Encode(nil, []abi.Tensor{{Name: "y", DType: abi.DTypeFP32, Handle: 999}})
		return abi.Pack(addr(out), uint32(len(out)))
	case "hostloop":
		for range 10000 {
			lastError(0, 0)
		}
	case "errmsg-oob":
		return -abi.Pack(0x7fff_0000, 10)
	case "badptr":
		codes := badPointers()
		data := make([]byte, 4*len(codes))
		for i, c := range codes {
			binary.LittleEndian.PutUint32(data[4*i:], uint32(c))
		}
		out = abi.Encode(nil, []abi.Tensor{{Name: "codes", DType: abi.DTypeInt32, Shape: []int64{int64(len(codes))}, Data: data}})
		return abi.Pack(addr(out), uint32(len(out)))
	}
	return abi.Pack(p, uint32(n)) // echo the input list
}
