package guest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A guest's error message longer than the host keeps is cut at a
// character, not inside one: the cut at 4096 bytes split the 'é' after
// 4095 'a' and left its first byte, invalid UTF-8 that a status message
// or a log line then carried.
func TestGuestErrorCutAtRune(t *testing.T) {
	msg := strings.Repeat("a", 4095) + "é"
	m := &zzModule{}
	zzABIGuest(m)
	// Past the input buffer cyxwiz_alloc hands out (1024, 4096 bytes).
	m.data = append(m.data, zzData(16384, []byte(msg)))
	pre := m.addFunc(2, zzCat([]byte{0}, zzReturnGuestError(16384, uint32(len(msg)))))
	m.export("preprocess", 0x00, pre)

	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	ctx := context.Background()
	mod, err := rt.Compile(ctx, m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(ctx)
	p, err := rt.NewPool(ctx, mod, guest.PoolConfig{Name: "long-error"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	_, err = p.Preprocess(ctx, []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1}, []float32{1})})
	if !errors.Is(err, guest.ErrGuest) {
		t.Fatalf("err = %v, want ErrGuest", err)
	}
	s := err.Error()
	if !utf8.ValidString(s) {
		t.Fatalf("error message is not valid UTF-8: ends %q", s[len(s)-8:])
	}
	if !strings.HasSuffix(s, strings.Repeat("a", 4095)) {
		t.Fatalf("error message ends %q (%d bytes), want the 4095 'a' kept whole", s[max(len(s)-8, 0):], len(s))
	}
}
