package cyxwiz

import (
	"context"
	"log/slog"
	"runtime"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// dtype arguments are i32s: one that is no dtype (256+12 once passed as
// FP32 through its low 8 bits) is refused with EINVAL.
func TestDTypeArgumentChecked(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{})
	mem.Write(1024, []byte{2, 0, 0, 0, 0, 0, 0, 0}) // shape [2]
	h := hostTensorNew(context.Background(), s, mem, stack(0, 1, 256+uint32(tensor.FP32), 1024, 1, 4096, 8))
	if h > 0 {
		x, _ := s.Get(uint32(h))
		t.Errorf("tensor_new with dtype %d: handle %d of dtype %v, want EINVAL", 256+int(tensor.FP32), h, x.DType)
	}
	in := s.Put(tensor.New("x", tensor.Int32, 2))
	if got := hostCast(context.Background(), s, mem, stack(in, 256+uint32(tensor.FP32))); got > 0 {
		y, _ := s.Get(uint32(got))
		t.Errorf("cast to dtype %d: handle %d of dtype %v, want EINVAL", 256+int(tensor.FP32), got, y.DType)
	}
}

// Error messages quote at most 64 bytes of guest data and are cut at 4 KiB:
// a config_get of a 4 MiB key once made the host allocate ~32 MiB that no
// limit counted (%q writes a zero byte as 4 characters).
func TestErrorMessagesBounded(t *testing.T) {
	mem := guestMemory(t, 80) // 5 MiB
	s := NewSession(Env{Limits: Limits{MaxBytes: 1 << 20}, Config: map[string]string{}})
	const keyLen = 4 << 20
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if got := hostConfigGet(context.Background(), s, mem, stack(0, keyLen, 0, 16)); got != int32(abi.ENOENT) {
		t.Fatalf("config_get: %d", got)
	}
	n := hostLastError(context.Background(), s, mem, stack(0, 16))
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("config_get of a %d MiB key: last_error length %d MiB, host allocated %d MiB (limit 1 MiB)", keyLen>>20, n>>20, alloc>>20)
	if alloc > 2<<20 {
		t.Errorf("a failed config_get and last_error allocated %d MiB on the host", alloc>>20)
	}
}

// countingHandler counts the records logged and the bytes of their messages.
type countingHandler struct{ records, bytes, warnings int }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.records++
	h.bytes += len(r.Message)
	if r.Level == slog.LevelWarn {
		h.warnings++
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// A call logs at most 64 KiB, as its stdout and stderr keep: log capped
// each message at 4 KiB but not their number, so a guest logging in a
// loop wrote to the node's log at full speed until its deadline.
func TestLogBoundedPerCall(t *testing.T) {
	mem := guestMemory(t, 1)
	h := &countingHandler{}
	s := NewSession(Env{Log: slog.New(h)})
	for call := range 2 {
		*h = countingHandler{}
		for range 1000 {
			if rc := hostLog(context.Background(), s, mem, stack(0, 0, 4096)); rc != 0 {
				t.Fatalf("log: %d", rc)
			}
		}
		if h.bytes > 64<<10 || h.records == 0 {
			t.Errorf("call %d: 1000 messages of 4 KiB logged %d records, %d KiB", call, h.records, h.bytes>>10)
		}
		s.EndCall()
		if h.warnings != 1 {
			t.Errorf("call %d: %d warnings about dropped messages, want 1", call, h.warnings)
		}
	}
}

// A log message that runs past the end of guest memory is EFAULT, as any
// such pointer and length (ABI.md), though only its first 4 KiB would be
// logged: the log took those and returned 0, hiding the guest's bad length.
func TestLogMessageOutsideMemory(t *testing.T) {
	mem := guestMemory(t, 1)
	h := &countingHandler{}
	s := NewSession(Env{Log: slog.New(h)})
	for _, tt := range []struct{ ptr, n uint32 }{{0, 65537}, {65000, 1000}, {0, 1 << 31}, {60000, 0xffff_ffff}} {
		if rc := hostLog(context.Background(), s, mem, stack(0, tt.ptr, tt.n)); rc != int32(abi.EFAULT) {
			t.Errorf("log of %d bytes at %d in a 65536-byte memory: %d, want EFAULT", tt.n, tt.ptr, rc)
		}
	}
	if h.records != 0 {
		t.Errorf("%d messages logged", h.records)
	}
	if rc := hostLog(context.Background(), s, mem, stack(0, 0, 65536)); rc != 0 || h.records != 1 || h.bytes > 4096 {
		t.Errorf("log of the whole memory: %d, %d records of %d bytes; want 0, 1 of at most 4096", rc, h.records, h.bytes)
	}
}
