// Package guest runs the node's WebAssembly guest modules (guest ABI v1,
// guests/ABI.md) in a wazero sandbox: per-deployment preprocess,
// postprocess, batch policy and custom-format code.
//
// One Runtime per node compiles modules once per SHA-256 (with an on-disk
// compilation cache, its least recently used entries removed beyond
// Config.CacheMaxBytes) and hosts the WASI clocks and the "cyxwiz" host
// functions (hostfuncs/cyxwiz). A Pool per (deployment, guest) runs calls on
// up to PoolConfig.Instances instances:
//
//	rt, err := guest.NewRuntime(ctx, guest.Config{CacheDir: "var/wasm-cache"}, log)
//	defer rt.Close(ctx)
//	m, err := rt.Compile(ctx, wasmBytes)
//	defer m.Close(ctx)
//	pre, err := rt.NewPool(ctx, m, guest.PoolConfig{
//		Name:      "ocr/pre",
//		Instances: 4,
//		Eager:     true,
//		Require:   []guest.Entry{guest.EntryPreprocess},
//		Config:    map[string]string{"height": "48"},
//		Infer:     inferForThisDeployment,
//		Log:       log.With("deployment", "ocr"),
//	})
//	defer pre.Close(ctx)
//	x, err := pre.Preprocess(ctx, request)
//
// Every call has a deadline (the caller's context, at most
// Config.CallTimeout) that stops even a guest in an endless loop; the
// memory of each instance is capped (Config.MemoryLimitPages for the
// Runtime, lower per guest with CompileLimited, which writes the limit into
// the module's declared maximum), and so are the host tensors it may create
// (Config.Limits).
//
// Errors wrap a sentinel the gRPC layer maps to a code:
//
//	ErrDeadline  (also wraps context.DeadlineExceeded)  DeadlineExceeded
//	ErrMemory                                          ResourceExhausted
//	ErrTrap      (a caller's cancellation wraps context.Canceled) Internal
//	ErrBadOutput                                       Internal
//	ErrABI                                             FailedPrecondition (the deployment fails)
//	ErrGuest     (the guest rejected the request)      InvalidArgument
//	loaders.ErrInvalidInput (a malformed input tensor) InvalidArgument
//	loaders.ErrClosed (the pool was closed)            Unavailable
//
// The package starts one goroutine per instance a call makes, which ends
// when the instance is made (at most Config.InitTimeout), holding one of
// the pool's tokens (Close waits for it, and stops it when its context
// ends first); wazero's per-call context watcher ends with the call.
package guest
