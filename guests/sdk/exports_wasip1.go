//go:build wasip1

package sdk

import "github.com/cyxwiz/cyxwiz-node/guests/abi"

//go:wasmexport cyxwiz_abi_version
func exportVersion() int32 { return abi.Version }

//go:wasmexport cyxwiz_alloc
func exportAlloc(size int32) uint32 { return allocIn(size) }

//go:wasmexport cyxwiz_entries
func exportEntries() int32 { return entrySet() }

//go:wasmexport preprocess
func exportPreprocess(_ uint32, n int32) int64 { return dispatch(abi.Preprocess, n) }

//go:wasmexport postprocess
func exportPostprocess(_ uint32, n int32) int64 { return dispatch(abi.Postprocess, n) }

//go:wasmexport batch_policy
func exportBatchPolicy(_ uint32, n int32) int64 { return dispatch(abi.BatchPolicy, n) }

//go:wasmexport format_load
func exportFormatLoad(_ uint32, n int32) int64 { return dispatch(abi.FormatLoad, n) }

//go:wasmexport format_infer
func exportFormatInfer(_ uint32, n int32) int64 { return dispatch(abi.FormatInfer, n) }

//go:wasmexport signature
func exportSignature(_ uint32, n int32) int64 { return dispatch(abi.Signature, n) }

//go:wasmimport cyxwiz log
func hostLog(level int32, p, n uint32) int32

//go:wasmimport cyxwiz config_get
func configGet(kp, kn, op, oc uint32) int32

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
