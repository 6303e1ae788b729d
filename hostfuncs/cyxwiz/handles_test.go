package cyxwiz

import (
	"context"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Handles reach the guest as i32s: after 2^31-1 of them in an instance's
// life the counter starts again at 1, instead of handing out numbers that
// read as negative errnos. Setting the counter stands in for 2^31 earlier
// handles.
func TestHandlesWrapBefore2to31(t *testing.T) {
	mem := guestMemory(t, 1)
	s := NewSession(Env{})
	s.next = 1<<31 - 2
	mem.Write(4096, make([]byte, 8))
	for i := range 3 {
		h := newTensor(s, mem, "x", 8, 2)
		if h <= 0 {
			t.Errorf("tensor_new %d after 2^31 handles: returned %d (errno %v, last_error %q), live handles %d",
				i, h, abi.Errno(h), s.LastError(), s.Handles())
		}
		s.EndCall()
	}
	// The same for an input passed by handle and an operation on it.
	in := s.Put(tensor.New("in", tensor.FP32, 2))
	if got := hostRelu(context.Background(), s, mem, stack(in)); got <= 0 {
		t.Errorf("relu of input handle %d: returned %d", in, got)
	}
}
