package guest_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// hostileConfig keeps failures quick: 32 MiB of guest memory, 16 MiB of
// host tensors, 1.5 s calls (filling the memory takes the guest's garbage
// collector ~0.3 s).
var hostileConfig = guest.Config{
	MemoryLimitPages: 512,
	CallTimeout:      10 * time.Second,
	Limits:           cyxwiz.Limits{MaxBytes: 16 << 20},
}

func mode(m string) []*tensor.Tensor {
	return []*tensor.Tensor{bytesTensor("mode", []byte(m)), tensor.FromSlice("v", tensor.FP32, []int64{2}, []float32{1, 2})}
}

func checkEcho(t testing.TB, p *guest.Pool) {
	t.Helper()
	out, err := p.Preprocess(context.Background(), mode("ok"))
	if err != nil {
		t.Fatalf("healthy call after a failure: %v", err)
	}
	if len(out) != 2 || out[1].Name != "v" || tensor.View[float32](out[1])[1] != 2 {
		t.Fatalf("healthy call: got %v", out)
	}
}

func TestHostile(t *testing.T) {
	rt := newRuntime(t, hostileConfig)
	p := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Instances: 2})
	bystander := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Name: "bystander", Eager: true})
	tests := []struct {
		mode string
		want error
		msg  string
	}{
		{"loop", guest.ErrDeadline, ""},
		{"bomb", guest.ErrMemory, "out of memory"},
		{"hostbomb", guest.ErrMemory, "limit"},
		{"panic", guest.ErrTrap, "hostile: boom"},
		{"nilderef", guest.ErrTrap, "nil pointer dereference"},
		{"exit", guest.ErrTrap, "exit_code(3)"},
		{"fail", guest.ErrGuest, "invalid argument"},
		{"dupout", guest.ErrBadOutput, "the limit is"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			// The pool's call timeout (10 s) leaves a memory bomb time to
			// hit its limit on a loaded machine; the endless loop gets a
			// caller deadline of 1.5 s.
			ctx, cancel := context.WithCancel(context.Background())
			if tt.want == guest.ErrDeadline {
				ctx, cancel = context.WithTimeout(context.Background(), 1500*time.Millisecond)
			}
			defer cancel()
			start := time.Now()
			_, err := p.Preprocess(ctx, mode(tt.mode))
			took := time.Since(start)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tt.want, tt.msg)
			}
			if !strings.Contains(err.Error(), "test/hostile") {
				t.Errorf("error does not name the guest: %v", err)
			}
			if tt.want == guest.ErrDeadline {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("deadline error does not wrap context.DeadlineExceeded: %v", err)
				}
				if took > 3*time.Second {
					t.Errorf("stopped after %v, the deadline is 1.5s", took)
				}
			}
			checkEcho(t, p)
			checkEcho(t, bystander)
		})
	}
	t.Run("caller deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := p.Preprocess(ctx, mode("loop"))
		if !errors.Is(err, guest.ErrDeadline) || time.Since(start) > 250*time.Millisecond {
			t.Fatalf("err = %v after %v, want ErrDeadline after ~30ms", err, time.Since(start))
		}
		checkEcho(t, p)
	})
	t.Run("caller cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := p.Preprocess(ctx, mode("loop"))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		checkEcho(t, p)
	})
	t.Run("stderr flood", func(t *testing.T) {
		if _, err := p.Preprocess(context.Background(), mode("spam")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestBadOutput(t *testing.T) {
	rt := newRuntime(t, guest.Config{MaxOutputBytes: 1 << 20})
	for _, m := range []string{"huge", "oob", "garbage", "badhandle", "errmsg-oob"} {
		t.Run(m, func(t *testing.T) {
			p := newPool(t, rt, "host/guest/testdata/raw", guest.PoolConfig{Config: map[string]string{"mode": m}})
			_, err := p.Preprocess(context.Background(), mode("x"))
			if !errors.Is(err, guest.ErrBadOutput) {
				t.Fatalf("err = %v, want ErrBadOutput", err)
			}
		})
	}
}

// TestBadPointers passes out-of-bounds pointers (or unknown handles) to
// every host function: each returns an error to the guest, the host goes on.
func TestBadPointers(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	p := newPool(t, rt, "host/guest/testdata/raw", guest.PoolConfig{Config: map[string]string{"mode": "badptr"}})
	F, B := int32(abi.EFAULT), int32(abi.EBADF)
	want := []struct {
		fn   string
		code int32
	}{
		{"log", F}, {"config_get key", F}, {"config_get out", F}, {"last_error", F},
		{"tensor_new name", F}, {"tensor_new shape", F}, {"tensor_new data", F},
		{"tensor_info", F}, {"tensor_read", F}, {"tensor_name", F}, {"tensor_free", B}, {"tensor_pin", B},
		{"affine", B}, {"normalize", F}, {"softmax", B}, {"topk", F}, {"resize", B}, {"matmul", B},
		{"add", B}, {"relu", B}, {"transpose", F}, {"cast", B}, {"reshape", F}, {"concat", F},
		{"image_decode", B}, {"infer model", F}, {"infer handles", F}, {"infer out", F}, {"log wrap", F},
	}
	out, err := p.Preprocess(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	codes := tensor.View[int32](out[0])
	if len(codes) != len(want) {
		t.Fatalf("%d codes, want %d", len(codes), len(want))
	}
	for i, w := range want {
		if codes[i] != w.code {
			t.Errorf("%s returned %d (%v), want %v", w.fn, codes[i], abi.Errno(codes[i]), abi.Errno(w.code))
		}
	}
	// Every host function is covered.
	if got := len(hostFuncNames()); got != 23 {
		t.Errorf("the test covers 23 host functions, the module has %d", got)
	}
}

func hostFuncNames() []string {
	return []string{abi.FuncLog, abi.FuncConfigGet, abi.FuncLastError, abi.FuncTensorNew, abi.FuncTensorInfo,
		abi.FuncTensorRead, abi.FuncTensorName, abi.FuncTensorFree, abi.FuncTensorPin, abi.FuncAffine,
		abi.FuncNormalize, abi.FuncSoftmax, abi.FuncTopK, abi.FuncResize, abi.FuncMatMul, abi.FuncAdd,
		abi.FuncRelu, abi.FuncTranspose, abi.FuncCast, abi.FuncReshape, abi.FuncConcat, abi.FuncImageDecode, abi.FuncInfer}
}

func TestABIErrors(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	ctx := context.Background()
	tests := []struct {
		name    string
		dir     string
		require []guest.Entry
		msg     string
	}{
		{"version mismatch", "host/guest/testdata/abiv2", nil, "guest ABI version 2"},
		{"missing alloc", "host/guest/testdata/noalloc", nil, "missing export cyxwiz_alloc"},
		{"no entry points", "host/guest/testdata/noentries", []guest.Entry{guest.EntryPreprocess}, "does not provide [preprocess]"},
		{"sdk guest without the entry", "guests/examples/cls-post", []guest.Entry{guest.EntryPreprocess}, "does not provide [preprocess]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := compile(t, rt, tt.dir)
			_, err := rt.NewPool(ctx, m, guest.PoolConfig{Name: tt.name, Require: tt.require})
			if !errors.Is(err, guest.ErrABI) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want ErrABI with %q", err, tt.msg)
			}
		})
	}
	t.Run("not wasm", func(t *testing.T) {
		if _, err := rt.Compile(ctx, []byte("\x00asm garbage")); !errors.Is(err, guest.ErrABI) {
			t.Fatalf("err = %v, want ErrABI", err)
		}
	})
	t.Run("entry not provided", func(t *testing.T) {
		p := newPool(t, rt, "guests/examples/cls-post", guest.PoolConfig{})
		if _, err := p.Preprocess(ctx, nil); !errors.Is(err, guest.ErrABI) {
			t.Fatalf("err = %v, want ErrABI", err)
		}
		if got := fmt.Sprint(p.Entries()); got != "[postprocess signature]" {
			t.Fatalf("Entries = %s", got)
		}
	})
	t.Run("closed", func(t *testing.T) {
		p := newPool(t, rt, "guests/examples/cls-post", guest.PoolConfig{})
		p.Close(ctx)
		if _, err := p.Postprocess(ctx, nil); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Fatalf("err = %v, want closed", err)
		}
	})
}

// TestFailureLoop fails 1,000 calls in the ways above and checks that no
// goroutine and no memory is left behind.
func TestFailureLoop(t *testing.T) {
	rt := newRuntime(t, hostileConfig)
	p := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Instances: 2, CallTimeout: 20 * time.Millisecond})
	ctx := context.Background()
	modes := []string{"panic", "nilderef", "exit", "fail", "hostbomb"}
	n := 1000
	if testing.Short() {
		n = 100
	}
	run := func(i int) {
		m := modes[i%len(modes)]
		if i%50 == 49 {
			m = "loop"
		}
		if _, err := p.Preprocess(ctx, mode(m)); err == nil {
			t.Fatalf("call %d (%s) succeeded", i, m)
		}
	}
	for i := range 20 { // warm up: pools, caches, wazero's own state
		run(i)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	for i := range n {
		run(i)
	}
	checkEcho(t, p)
	var after runtime.MemStats
	deadline := time.Now().Add(2 * time.Second)
	for {
		runtime.GC()
		runtime.ReadMemStats(&after)
		if runtime.NumGoroutine() <= goroutines+2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // wazero's context watchers end asynchronously
	}
	if g := runtime.NumGoroutine(); g > goroutines+2 {
		t.Errorf("goroutines: %d before, %d after %d failures", goroutines, g, n)
	}
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d failures: heap in use %d -> %d MiB, goroutines %d -> %d", n, before.HeapInuse>>20, after.HeapInuse>>20, goroutines, runtime.NumGoroutine())
	if growth > 64<<20 {
		t.Errorf("heap in use grew by %d MiB over %d failures", growth>>20, n)
	}
}

func TestInfer(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	infer := func(ctx context.Context, model string, in []*tensor.Tensor) ([]*tensor.Tensor, error) {
		if model != "" {
			return nil, fmt.Errorf("model %q: %w", model, cyxwiz.ErrNotAllowed)
		}
		if len(in) != 1 || in[0].Name != "v" {
			return nil, fmt.Errorf("want input v, got %d", len(in))
		}
		v := tensor.View[float32](in[0])
		return []*tensor.Tensor{tensor.FromSlice("out", tensor.FP32, in[0].Shape, []float32{2 * v[0], 2 * v[1]})}, nil
	}
	p := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Infer: infer})
	out, err := p.Preprocess(context.Background(), mode("infer"))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Name != "out" || tensor.View[float32](out[0])[1] != 4 {
		t.Fatalf("got %v", out)
	}
	_, err = p.Preprocess(context.Background(), mode("infer-other"))
	if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), "EPERM") {
		t.Fatalf("err = %v, want ErrGuest with EPERM", err)
	}
}

// A guest's own memory limit (below the runtime's) stops it where the
// runtime's would not, and only its instances.
func TestGuestMemoryLimit(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t, hostileConfig) // 512 pages: 32 MiB
	wasm := guesttest.Build(t, "host/guest/testdata/hostile")
	open := func(pages uint32) *guest.Pool {
		t.Helper()
		m, err := rt.CompileLimited(ctx, wasm, pages)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close(ctx) })
		p, err := rt.NewPool(ctx, m, guest.PoolConfig{Name: fmt.Sprintf("limit-%d", pages)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(ctx) })
		return p
	}
	small, roomy := open(160), open(0) // 10 MiB; the runtime's 32 MiB
	if _, err := small.Preprocess(ctx, mode("grow")); !errors.Is(err, guest.ErrMemory) {
		t.Fatalf("16 MiB under a 10 MiB limit: err = %v, want ErrMemory", err)
	}
	if _, err := roomy.Preprocess(ctx, mode("grow")); err != nil {
		t.Fatalf("16 MiB under the runtime's 32 MiB: %v", err)
	}
	checkEcho(t, small)

	// A limit at or over the runtime's is the runtime's: the same module.
	a, err := rt.CompileLimited(ctx, wasm, 512)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	b, err := rt.Compile(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	if a != b {
		t.Error("a limit equal to the runtime's compiled a second module")
	}
	// Below what the guest starts with, it cannot run at all.
	if _, err := rt.CompileLimited(ctx, wasm, 2); !errors.Is(err, guest.ErrMemory) || !strings.Contains(err.Error(), "starts with") {
		t.Fatalf("2 pages: err = %v, want ErrMemory naming the initial memory", err)
	}
}

// Without precise_clock a guest's clocks tick in whole milliseconds.
func TestGuestClockResolution(t *testing.T) {
	rt := newRuntime(t, hostileConfig)
	coarse := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Name: "coarse"})
	precise := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Name: "precise", PreciseClock: true})
	read := func(p *guest.Pool) []int64 {
		t.Helper()
		out, err := p.Preprocess(context.Background(), mode("clock"))
		if err != nil {
			t.Fatal(err)
		}
		return tensor.View[int64](out[0])
	}
	for _, v := range read(coarse) {
		if v%int64(time.Millisecond) != 0 {
			t.Fatalf("coarse clock read %d: finer than a millisecond", v)
		}
	}
	fine := 0
	for _, v := range read(precise) {
		if v%int64(time.Millisecond) != 0 {
			fine++
		}
	}
	if fine == 0 {
		t.Fatal("precise clock: every reading a whole millisecond")
	}
	if now := time.Now().UnixNano(); abs(read(coarse)[0]-now) > int64(time.Minute) {
		t.Fatal("coarse clock is not the real time")
	}
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// A client's long tensor name reaches the guest whole (the SDK asks again
// with room for it); one too long for the ABI's framing is refused as
// invalid input, and neither costs the instance.
func TestLongNamesAndBadInputKeepTheInstance(t *testing.T) {
	rt := newRuntime(t, hostileConfig)
	p := newPool(t, rt, "host/guest/testdata/hostile", guest.PoolConfig{Instances: 1})
	ctx := context.Background()
	count := func() int64 {
		t.Helper()
		out, err := p.Preprocess(ctx, mode("count"))
		if err != nil {
			t.Fatal(err)
		}
		return tensor.View[int64](out[0])[0]
	}
	first := count()

	long := strings.Repeat("x", 300)
	in := mode("relu")
	in[1] = tensor.FromSlice(long, tensor.FP32, []int64{2}, []float32{-1, 2})
	out, err := p.Preprocess(ctx, in)
	if err != nil {
		t.Fatalf("300-byte name: %v", err)
	}
	if out[0].Name != long || tensor.View[float32](out[0])[1] != 2 {
		t.Fatalf("relu of a 300-byte name: %q %v", out[0].Name[:10], out[0].Shape)
	}

	in[1] = tensor.FromSlice(strings.Repeat("y", 1<<16), tensor.FP32, []int64{2}, []float32{-1, 2})
	if _, err := p.Preprocess(ctx, in); !errors.Is(err, loaders.ErrInvalidInput) {
		t.Errorf("64 KiB name: %v, want ErrInvalidInput", err)
	}
	bad := mode("count")
	bad[1] = &tensor.Tensor{Name: "v", DType: tensor.FP32, Shape: []int64{4}, Data: []byte{1}}
	if _, err := p.Preprocess(ctx, bad); !errors.Is(err, loaders.ErrInvalidInput) {
		t.Errorf("short data: %v, want ErrInvalidInput", err)
	}
	// The same instance served every call: its count goes on.
	if n := count(); n != first+1 {
		t.Errorf("calls counted %d after %d: the instance was replaced", n, first)
	}
}

// A guest whose initial memory is over the runtime's limit fails with
// ErrMemory, as over a guest's own limit (CompileLimited): it failed with
// ErrABI, wazero's "min 600 pages over limit", a FailedPrecondition.
func TestInitialMemoryOverRuntimeLimit(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	m.memory = zzCat([]byte{0x00}, zzU(600))
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir(), MemoryLimitPages: 512})
	for _, pages := range []uint32{0, 512, 300} {
		mod, err := rt.CompileLimited(context.Background(), m.bytes(), pages)
		if err == nil {
			mod.Close(context.Background())
		}
		if !errors.Is(err, guest.ErrMemory) || errors.Is(err, guest.ErrABI) || !strings.Contains(err.Error(), "starts with 600 pages") {
			t.Errorf("600 initial pages, limit %d (runtime 512): err = %v, want ErrMemory", pages, err)
		}
	}
}
