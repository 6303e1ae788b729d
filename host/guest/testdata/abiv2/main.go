// Command abiv2 claims guest ABI version 2.
package main

import "unsafe"

func main() {}

var in [64]byte

//go:wasmexport cyxwiz_abi_version
func version() int32 { return 2 }

//go:wasmexport cyxwiz_alloc
func alloc(n int32) uint32 { return uint32(uintptr(unsafe.Pointer(&in[0]))) }

//go:wasmexport preprocess
func preprocess(p uint32, n int32) int64 { return 0 }
