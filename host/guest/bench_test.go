package guest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// BenchmarkGuests measures what the guest runtime costs, with the call
// deadlines on (WithCloseOnContextDone):
//
//   - pipeline_vs_native: the PP-OCR direction classifier as
//     ppocr-pre → ONNX Runtime → cls-post guests, over the same pipeline in
//     native Go (decode → fused resize+normalise → ORT → softmax/top-1);
//   - call_overhead_ns: one Pool call of an entry point that does nothing
//     (encode, alloc, copy in, call, decode: the export call path);
//   - host_call_ns: one guest→host function call;
//   - warm_instantiate_ms: starting an instance from a compiled module
//     (instantiate, _initialize, ABI checks), which a pool does ahead.
//
// Run: go test -run '^$' -bench BenchmarkGuests -benchtime 1x ./host/guest/
func BenchmarkGuests(b *testing.B) {
	ctx := context.Background()
	model := ppocr(b)
	rt := newRuntime(b, guest.Config{})
	p := newPipeline(b, rt, model)
	file := encodePNG(b, testImage(320, 48))

	const rounds = 200
	var tGuest, tNative time.Duration
	for i := range rounds + 20 {
		start := time.Now()
		if _, err := p.run(ctx, file); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if _, _, err := runNative(ctx, model, file); err != nil {
			b.Fatal(err)
		}
		if i >= 20 { // warm-up
			tGuest += mid.Sub(start)
			tNative += time.Since(mid)
		}
	}
	ratio := float64(tGuest) / float64(tNative)

	raw := newPool(b, rt, "host/guest/testdata/raw", guest.PoolConfig{Config: map[string]string{"mode": "echo"}})
	loop := newPool(b, rt, "host/guest/testdata/raw", guest.PoolConfig{Config: map[string]string{"mode": "hostloop"}})
	in := []*tensor.Tensor{tensor.FromSlice("v", tensor.FP32, []int64{2}, []float32{1, 2})}
	perCallCtx := func(ctx context.Context, p *guest.Pool, n int) time.Duration {
		for range 100 {
			if _, err := p.Preprocess(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
		start := time.Now()
		for range n {
			if _, err := p.Preprocess(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(n)
	}
	perCall := func(p *guest.Pool, n int) time.Duration { return perCallCtx(ctx, p, n) }
	call := perCall(raw, 20000)
	hostCall := (perCall(loop, 200) - call) / 10000 // the loop makes 10,000 host calls
	// A served request's context can be cancelled (the client may go away):
	// the call then also watches it.
	cctx, cancelCall := context.WithCancel(ctx)
	callCancellable := perCallCtx(cctx, raw, 20000)
	cancelCall()

	m := compile(b, rt, "guests/examples/cls-post")
	const inst = 50
	var tInst time.Duration
	for range inst {
		start := time.Now()
		pool, err := rt.NewPool(ctx, m, guest.PoolConfig{Name: "bench"})
		tInst += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		pool.Close(ctx)
	}
	instMs := float64(tInst.Microseconds()) / inst / 1000

	b.ReportMetric(ratio, "pipeline_vs_native")
	b.ReportMetric(float64(call.Nanoseconds()), "call_overhead_ns")
	b.ReportMetric(float64(hostCall.Nanoseconds()), "host_call_ns")
	b.ReportMetric(instMs, "warm_instantiate_ms")
	fmt.Printf("bench-guests: pipeline_vs_native=%.3f call_overhead_ns=%d warm_instantiate_ms=%.2f\n", ratio, call.Nanoseconds(), instMs)
	fmt.Printf("bench-guests-detail: pipeline_guest_us=%d pipeline_native_us=%d host_call_ns=%d call_overhead_cancellable_ctx_ns=%d\n",
		(tGuest / rounds).Microseconds(), (tNative / rounds).Microseconds(), hostCall.Nanoseconds(), callCancellable.Nanoseconds())
}
