package guest_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// What clients control reaches guests as errors, never as traps or
// garbled messages.
func TestSDKEdgeCases(t *testing.T) {
	rt := newRuntime(t, guest.Config{})
	ctx := context.Background()

	// An empty batch of images.
	pre := newPool(t, rt, "guests/examples/ppocr-pre", guest.PoolConfig{})
	_, err := pre.Preprocess(ctx, []*tensor.Tensor{{Name: "image", DType: tensor.Bytes, Shape: []int64{0}}})
	if !errors.Is(err, guest.ErrGuest) {
		t.Errorf("ppocr-pre with no image: %v, want ErrGuest", err)
	}

	// A host error longer than the SDK's first buffer: its text, not NULs.
	post := newPool(t, rt, "guests/examples/cls-post", guest.PoolConfig{})
	long := strings.Repeat("n", 600)
	_, err = post.Postprocess(ctx, []*tensor.Tensor{tensor.FromSlice(long, tensor.Int64, []int64{1, 2}, []int64{1, 2})})
	if err == nil || strings.Contains(err.Error(), "\x00") || !strings.Contains(err.Error(), "nnnnnnnnnn") {
		t.Errorf("cls-post on a long-named INT64 tensor: %q", err)
	}
}
