package guest_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// A call whose caller has already gone never reaches wazero (which closes
// the module when it sees a done context at the call's start): the instance
// and, for a custom format, its loaded model stay, so already-cancelled
// requests cannot churn a deployment's instances.
func TestCancelledCallKeepsInstance(t *testing.T) {
	m := &zzModule{}
	zzABIGuest(m)
	pre := m.addFunc(2, zzCat(
		[]byte{0},
		[]byte{0x41, 0, 0x41, 0, 0x2d, 0, 0, 0x41, 1, 0x6a, 0x3a, 0, 0}, // mem[0]++
		zzReturnGuestError(0, 1), // the count, as the error message
	))
	m.export("preprocess", 0x00, pre)
	rt := newRuntime(t, guest.Config{CacheDir: t.TempDir()})
	mod, err := rt.Compile(context.Background(), m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(context.Background())
	p, err := rt.NewPool(context.Background(), mod, guest.PoolConfig{Name: "count", Instances: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	count := func() byte {
		t.Helper()
		_, err := p.Preprocess(context.Background(), nil)
		if !errors.Is(err, guest.ErrGuest) {
			t.Fatalf("err = %v", err)
		}
		s := err.Error()
		return s[len(s)-1]
	}
	if n := count(); n != 1 {
		t.Fatalf("first call counted %d", n)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	ran := 0
	for range 20 { // acquire picks the token or the done context at random
		_, err := p.Preprocess(cancelled, nil)
		if err == nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled call: %v", err)
		}
		if !strings.Contains(err.Error(), "waiting for an instance") {
			ran++
			t.Logf("cancelled call reached the instance: %v", err)
		}
	}
	if ran == 0 {
		t.Skip("no cancelled call got past acquire")
	}
	if n := count(); n != 2 {
		t.Fatalf("after %d calls cancelled before they started, the count is %d, want 2: the instance was replaced", ran, n)
	}
}
