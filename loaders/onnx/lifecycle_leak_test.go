package onnx_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A node loads and unloads models for weeks: every load, every kind of
// Infer (served, refused by this package, refused by ORT, cancelled, after
// Close) and every failed load gives back what ONNX Runtime handed out.
// The cycle moves megabytes through ORT-owned memory (string inputs and
// outputs, ORT-allocated outputs) and runs sessions with their own thread
// pools, so a value, a session or a pool left behind per cycle shows as
// steady growth from N to 2N cycles, where allocator warm-up does not.
func TestLoadInferCloseCyclesHoldSteady(t *testing.T) {
	l := newLoader(t)
	ppocr := loadertest.NativeLib(t, ppocrRel)
	corrupt := writeModel(t, "corrupt.onnx", []byte("not an ONNX model"))
	strID := writeModel(t, "str.onnx", onnxtest.Identity(onnxtest.String, []int64{-1, 4}))
	f32ID := writeModel(t, "f32.onnx", onnxtest.Identity(onnxtest.Float, []int64{-1, 4}))
	f16ID := writeModel(t, "f16.onnx", onnxtest.Identity(onnxtest.Float16, []int64{-1, 4}))

	// 1 MiB of strings in, 1 MiB out (C copies on both sides).
	strs := tensor.New("x", tensor.Bytes, 256, 4)
	for i := range strs.Strings {
		strs.Strings[i] = bytes.Repeat([]byte{'a' + byte(i%26)}, 1024)
	}
	withNUL := strs.Clone()
	withNUL.Strings[7] = []byte("a\x00b")
	big := tensor.New("x", tensor.FP32, 65536, 4) // 1 MiB out, ORT-allocated
	half := tensor.New("x", tensor.FP16, 65536, 4)

	bg := context.Background()
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	wantErr := func(what string, err, target error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Fatalf("%s: err = %v, want %v", what, err, target)
		}
	}
	cycle := func() {
		t.Helper()
		// PP-OCR with an intra-op pool of its own (2 threads beside the
		// caller's).
		m, err := l.Load(bg, ppocr, loaders.Options{IntraOpThreads: 3})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(bg) // runs with RunOptions
		defer cancel()
		if _, err := m.Infer(ctx, []*tensor.Tensor{ppocrInput(2, 1)}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Infer(bg, []*tensor.Tensor{ppocrInput(1, 2)}, nil); err != nil {
			t.Fatal(err)
		}
		_, err = m.Infer(bg, []*tensor.Tensor{tensor.New("x", tensor.FP32, 3, 48, 192)}, nil)
		wantErr("wrong rank", err, loaders.ErrInvalidInput)
		_, err = m.Infer(bg, []*tensor.Tensor{tensor.New("x", tensor.FP32, 1, 3, 0, 5)}, nil)
		wantErr("shape ORT refuses", err, loaders.ErrInvalidInput)
		_, err = m.Infer(cancelled, []*tensor.Tensor{ppocrInput(1, 3)}, nil)
		wantErr("cancelled", err, context.Canceled)
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		_, err = m.Infer(bg, []*tensor.Tensor{ppocrInput(1, 4)}, nil)
		wantErr("after Close", err, loaders.ErrClosed)

		// Loads that fail: before any session, and after the first one
		// (ioInfo's) was made.
		_, err = l.Load(bg, corrupt, loaders.Options{})
		wantErr("corrupt model", err, loaders.ErrInvalidModel)
		if _, err := l.Load(bg, ppocr, loaders.Options{IntraOpThreads: -1}); err == nil {
			t.Fatal("Load with -1 intra-op threads succeeded")
		}

		// BYTES through ORT's string tensors, ORT-allocated FP32, and
		// pre-allocated FP16 outputs.
		m, err = l.Load(bg, strID, loaders.Options{IntraOpThreads: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Infer(ctx, []*tensor.Tensor{strs}, nil); err != nil {
			t.Fatal(err)
		}
		_, err = m.Infer(bg, []*tensor.Tensor{withNUL}, nil)
		wantErr("NUL in a string", err, loaders.ErrInvalidInput)
		m.Close()
		for _, c := range []struct {
			path string
			x    *tensor.Tensor
		}{{f32ID, big}, {f16ID, half}} {
			m, err = l.Load(bg, c.path, loaders.Options{IntraOpThreads: 1})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Infer(bg, []*tensor.Tensor{c.x}, nil); err != nil {
				t.Fatal(err)
			}
			_, err = m.Infer(bg, []*tensor.Tensor{tensor.New("x", c.x.DType, 2, 5)}, nil)
			wantErr("wrong dimension", err, loaders.ErrInvalidInput)
			m.Close()
		}
	}

	const n = 25
	for range 5 {
		cycle() // allocator and ORT warm-up
	}
	s0 := loadertest.SampleProc(t)
	for range n {
		cycle()
	}
	s1 := loadertest.SampleProc(t)
	for range n {
		cycle()
	}
	s2 := loadertest.SampleProc(t)
	t.Logf("after warm-up, %d and %d cycles: RSS %d, %d, %d KiB; threads %d, %d, %d", n, 2*n,
		s0.RSSKiB, s1.RSSKiB, s2.RSSKiB, s0.Threads, s1.Threads, s2.Threads)
	// A cycle moves over 4 MiB through ORT; one value, session or arena
	// left behind per cycle is well over 16 MiB in n cycles. Allocator
	// fragmentation stays under it.
	if grew := s2.RSSKiB - s1.RSSKiB; grew > 16<<10 {
		t.Errorf("RSS grew by %d KiB over cycles %d to %d (%d KiB over the first %d): native memory is left behind", grew, n, 2*n, s1.RSSKiB-s0.RSSKiB, n)
	}
	// Two pool threads per PP-OCR session: a pool left behind is 2n threads.
	if s2.Threads > s1.Threads+2 {
		t.Errorf("threads went from %d to %d over cycles %d to %d: ONNX Runtime thread pools outlive their sessions", s1.Threads, s2.Threads, n, 2*n)
	}
}
