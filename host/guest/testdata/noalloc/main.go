// Command noalloc lacks the required cyxwiz_alloc export.
package main

func main() {}

//go:wasmexport cyxwiz_abi_version
func version() int32 { return 1 }

//go:wasmexport preprocess
func preprocess(p uint32, n int32) int64 { return 0 }
