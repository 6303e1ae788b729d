package cyxwiz

import (
	"context"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Tensor names are UTF-8 (ABI.md): tensor_new and tensor_name refused
// nothing, so a handle with a name like "\xff" failed only later, as a
// model input or in a response protobuf cannot marshal.
func TestTensorNamesMustBeUTF8(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{})
	mem.Write(4096, make([]byte, 8))
	for _, name := range []string{"\xff", "ok\xc3", "\xed\xa0\x80"} { // a bad byte, a cut rune, a surrogate
		if h := newTensor(s, mem, name, 8, 2); h != int32(abi.EINVAL) {
			t.Errorf("tensor_new named %q: returned %d, want EINVAL", name, h)
		}
	}
	if s.Handles() != 0 || s.used != 0 {
		t.Fatalf("refused tensor_new calls left %d handles, %d bytes charged", s.Handles(), s.used)
	}
	h := newTensor(s, mem, "x·y", 8, 2) // UTF-8 beyond ASCII is fine
	if h <= 0 {
		t.Fatalf("tensor_new: %d (%s)", h, s.LastError())
	}
	used := s.used
	mem.Write(0, []byte("a\xffb"))
	if rc := hostTensorName(context.Background(), s, mem, stack(uint32(h), 0, 3)); rc != int32(abi.EINVAL) {
		t.Errorf("tensor_name to %q: returned %d, want EINVAL", "a\xffb", rc)
	}
	if x, _ := s.Get(uint32(h)); x.Name != "x·y" || s.used != used {
		t.Errorf("after a refused rename: name %q, %d bytes charged (was %d)", x.Name, s.used, used)
	}
	in := s.Put(tensor.New("in", tensor.FP32, 2))
	mem.Write(0, []byte("é"))
	if rc := hostTensorName(context.Background(), s, mem, stack(in, 0, 2)); rc != 0 {
		t.Errorf("tensor_name to %q: %d (%s)", "é", rc, s.LastError())
	}
}
