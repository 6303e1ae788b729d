package main

import "encoding/binary"

//go:wasmimport cyxwiz log
func hostLog(level int32, p, n uint32) int32

//go:wasmimport cyxwiz last_error
func lastError(op, oc uint32) int32

//go:wasmimport cyxwiz tensor_new
func tensorNew(np, nn, dt, sp, rank, dp, dn uint32) int32

//go:wasmimport cyxwiz tensor_info
func tensorInfo(h, op, oc uint32) int32

//go:wasmimport cyxwiz tensor_read
func tensorRead(h, op, oc uint32) int32

//go:wasmimport cyxwiz tensor_name
func tensorName(h, np, nn uint32) int32

//go:wasmimport cyxwiz tensor_free
func tensorFree(h uint32) int32

//go:wasmimport cyxwiz tensor_pin
func tensorPin(h uint32) int32

//go:wasmimport cyxwiz affine
func affine(h uint32, scale, bias float32) int32

//go:wasmimport cyxwiz normalize
func normalize(h uint32, scale float32, mp, sp, n uint32, axis int32) int32

//go:wasmimport cyxwiz softmax
func softmax(h uint32, axis int32) int32

//go:wasmimport cyxwiz topk
func topk(h uint32, k int32, op uint32) int32

//go:wasmimport cyxwiz resize
func resize(h uint32, height, width, layout int32) int32

//go:wasmimport cyxwiz matmul
func matmul(a, b uint32) int32

//go:wasmimport cyxwiz add
func add(a, b uint32) int32

//go:wasmimport cyxwiz relu
func relu(h uint32) int32

//go:wasmimport cyxwiz transpose
func transpose(h, pp, n uint32) int32

//go:wasmimport cyxwiz cast
func cast(h, dt uint32) int32

//go:wasmimport cyxwiz reshape
func reshape(h, sp, rank uint32) int32

//go:wasmimport cyxwiz concat
func concat(hp, n uint32) int32

//go:wasmimport cyxwiz image_decode
func imageDecode(h uint32) int32

//go:wasmimport cyxwiz infer
func infer(mp, mn, hp, n, op, oc uint32) int32

// badPointers calls every host function with a pointer outside memory (or,
// for those that take only handles, a handle that does not exist) and
// returns what each returned, in abi.Func* order of the test's table.
func badPointers() []int32 {
	// A valid FP32 [2] tensor, to reach the pointer checks behind handles.
	name := []byte("v")
	shape := binary.LittleEndian.AppendUint64(nil, 2)
	data := make([]byte, 8)
	h := uint32(tensorNew(addr(name), 1, 12, addr(shape), 1, addr(data), 8))
	const none = 12345
	k := []byte("mode")
	return []int32{
		hostLog(0, bad, 100),
		configGet(bad, 4, addr(in[:]), 64),
		configGet(addr(k), 4, bad, 64),
		lastError(bad, 1024),
		tensorNew(bad, 1, 12, addr(shape), 1, addr(data), 8),
		tensorNew(addr(name), 1, 12, bad, 1, addr(data), 8),
		tensorNew(addr(name), 1, 12, addr(shape), 1, bad, 8),
		tensorInfo(h, bad, 1024),
		tensorRead(h, bad, 1024),
		tensorName(h, bad, 4),
		tensorFree(none),
		tensorPin(none),
		affine(none, 1, 1),
		normalize(h, 1, bad, addr(data), 2, 0),
		softmax(none, 0),
		topk(h, 1, bad),
		resize(none, 2, 2, 0),
		matmul(none, h),
		add(h, none),
		relu(none),
		transpose(h, bad, 1),
		cast(none, 12),
		reshape(h, bad, 1),
		concat(bad, 2),
		imageDecode(none),
		infer(bad, 4, addr(in[:]), 0, addr(in[:]), 4),
		infer(addr(k), 0, bad, 1, addr(in[:]), 4),
		infer(addr(k), 0, addr(in[:]), 0, bad, 4),
		hostLog(0, 0xffff_fff8, 0x10), // pointer + length wraps around
	}
}
