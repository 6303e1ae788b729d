// Command ppocr-pre is the preprocessing guest of the PP-OCR text-direction
// classifier: PNG/JPEG bytes (BYTES tensor "image", one element per image)
// are decoded, resized to 48×192, normalised as (pixel/255 - 0.5)/0.5 and
// returned as NCHW FP32 "x" [N, 3, 48, 192]. All the work is done by host
// operations; no pixel enters the guest's memory.
//
// Config: "height" and "width" override 48 and 192.
package main

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Preprocess: preprocess, Signature: signature}) }

// signature declares what clients send: the encoded images.
func signature() (sdk.Signature, error) {
	return sdk.Signature{Inputs: []sdk.TensorMeta{{Name: "image", DType: sdk.Bytes, Shape: []int64{-1}}}}, nil
}

func main() {}

func configInt(key string, def int) int {
	if v, ok := sdk.Config(key); ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	return def
}

var (
	mean = []float32{0.5, 0.5, 0.5}
	std  = []float32{0.5, 0.5, 0.5}
)

func preprocess(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if len(in) != 1 || in[0].DType() != sdk.Bytes {
		return nil, errors.New(`want one BYTES input "image"`)
	}
	h, w := configInt("height", 48), configInt("width", 192)
	images := []*sdk.Tensor{in[0]}
	if in[0].Len() != 1 {
		// Several images: split them (this copies the encoded files
		// through the guest; the pixels still stay on the host). The
		// last request's files are garbage by now: collect them first,
		// or the heap grew past the guest's memory on the way (an out
		// of memory trap, the instance thrown away) while each request
		// fit. Each file goes back to the host as a UINT8 view of the
		// one copy (image_decode takes those), not as a BYTES tensor
		// encoded afresh.
		runtime.GC()
		strs, err := in[0].Strings()
		if err != nil {
			return nil, err
		}
		images = images[:0]
		for _, s := range strs {
			images = append(images, sdk.New("image", sdk.Uint8, []int64{int64(len(s))}, s))
		}
	}
	parts := make([]*sdk.Tensor, len(images))
	for i, img := range images {
		x, err := one(img, h, w)
		if err != nil {
			if len(images) > 1 {
				return nil, fmt.Errorf("image %d of %d: %w", i, len(images), err)
			}
			return nil, err
		}
		parts[i] = x
	}
	if len(parts) == 0 {
		return nil, errors.New("ppocr-pre: no image in the request")
	}
	x := parts[0]
	if len(parts) > 1 {
		var err error
		if x, err = sdk.Concat(parts...); err != nil {
			return nil, err
		}
	}
	return []*sdk.Tensor{x.Named("x")}, nil
}

func one(img *sdk.Tensor, h, w int) (*sdk.Tensor, error) {
	px, err := sdk.DecodeImage(img) // UINT8 [H, W, 3]
	if err != nil {
		return nil, err
	}
	r, err := sdk.Resize(px, h, w, sdk.HWC) // FP32 [h, w, 3]
	if err != nil {
		return nil, err
	}
	chw, err := sdk.Transpose(r, 2, 0, 1) // [3, h, w]
	if err != nil {
		return nil, err
	}
	n, err := sdk.Normalize(chw, 1.0/255, mean, std, 0)
	if err != nil {
		return nil, err
	}
	return sdk.Reshape(n, 1, 3, int64(h), int64(w))
}
