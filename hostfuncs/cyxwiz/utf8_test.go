package cyxwiz

import (
	"context"
	"strings"
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

// Tensor names must fit the tensor list's 16-bit name length: tensor_new
// and tensor_name took names of any length, which tensor_info then handed
// back cut (and an output could never carry). Longer ones are EINVAL.
func TestTensorNamesFitTheList(t *testing.T) {
	mem := guestMemory(t, 4) // 256 KiB
	s := NewSession(Env{})
	long := strings.Repeat("n", abi.MaxNameLen+1)
	const at = 64 << 10 // the name, clear of newTensor's shape and data
	mem.Write(1024, []byte{2, 0, 0, 0, 0, 0, 0, 0})
	mem.Write(at, []byte(long))
	newNamed := func(n int) int32 {
		return hostTensorNew(context.Background(), s, mem, stack(at, uint32(n), uint32(tensor.FP32), 1024, 1, 4096, 8))
	}
	if h := newNamed(len(long)); h != int32(abi.EINVAL) {
		t.Errorf("tensor_new named %d bytes: returned %d, want EINVAL", len(long), h)
	}
	if s.Handles() != 0 || s.used != 0 {
		t.Fatalf("a refused tensor_new left %d handles, %d bytes charged", s.Handles(), s.used)
	}
	longest := long[:abi.MaxNameLen]
	h := newNamed(len(longest))
	if h <= 0 {
		t.Fatalf("tensor_new named %d bytes: %d (%s)", len(longest), h, s.LastError())
	}
	used := s.used
	if rc := hostTensorName(context.Background(), s, mem, stack(uint32(h), at, uint32(len(long)))); rc != int32(abi.EINVAL) {
		t.Errorf("tensor_name to %d bytes: returned %d, want EINVAL", len(long), rc)
	}
	if x, _ := s.Get(uint32(h)); x.Name != longest || s.used != used {
		t.Errorf("after a refused rename: a name of %d bytes, %d bytes charged (was %d)", len(x.Name), s.used, used)
	}
	// What tensor_info gives back is the whole name.
	const out = 160 << 10
	n := hostTensorInfo(context.Background(), s, mem, stack(uint32(h), out, 96<<10))
	if n <= 0 {
		t.Fatalf("tensor_info: %d (%s)", n, s.LastError())
	}
	b, _ := mem.Read(out, uint32(n))
	list, err := abi.Decode(b, abi.Size)
	if err != nil || len(list) != 1 || list[0].Name != longest {
		t.Errorf("tensor_info: %d entries, err %v", len(list), err)
	}
}
