// Command noentries follows the ABI but exports no entry point at all.
package main

import "unsafe"

func main() {}

var in [64]byte

//go:wasmexport cyxwiz_abi_version
func version() int32 { return 1 }

//go:wasmexport cyxwiz_alloc
func alloc(n int32) uint32 { return uint32(uintptr(unsafe.Pointer(&in[0]))) }
