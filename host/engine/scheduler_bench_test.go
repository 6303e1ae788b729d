package engine

import (
	"context"
	"testing"
)

// infer now wraps every request's own run (inline, solo, a batch of one) in
// context.WithCancel(ctx) + context.AfterFunc(s.runCtx, cancel): 4
// allocations (224 B) per request where the inline path made none, and two
// registrations under mutexes — the caller's context's and s.runCtx's, the
// latter shared by every request of the deployment. Measured here at
// GOMAXPROCS 2 (BenchmarkSchedulerInfer, trivial model, cancellable
// caller context): serial 190 -> 560 ns/op, 4 callers 230 -> 1550 ns/op.
// Per-request cost of the scheduler with a cancellable caller context (as
// gRPC gives), at concurrency 1 and in parallel.
func BenchmarkSchedulerInfer(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"nobatch-inline", Config{Instances: 4}},
		{"batch-delay0-inline", Config{MaxBatchSize: 8, Instances: 4}},
	} {
		b.Run(tc.name+"/serial", func(b *testing.B) {
			s, err := New("bench", trivialModel{}, tc.cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := req(1, 1, 16)
			b.ReportAllocs()
			for range b.N {
				if _, err := s.Infer(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			s, err := New("bench", trivialModel{}, tc.cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			b.SetParallelism(4)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				r := req(1, 1, 16)
				for pb.Next() {
					if _, err := s.Infer(ctx, r); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
