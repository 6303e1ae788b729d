package cyxwiz

import (
	"bytes"
	"fmt"
	"image"
	"image/draw"
	_ "image/jpeg" // registered decoders of image_decode
	_ "image/png"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// decodeImage decodes a PNG or JPEG held in a one-element BYTES tensor (or
// a rank-1 UINT8 tensor) into UINT8 RGB pixels shaped [H, W, 3]. The size
// in the header is charged (decoder buffers included) before decoding, so a
// small file that claims a huge image fails with ErrLimit instead of taking
// the memory.
func (s *Session) decodeImage(x *tensor.Tensor) (*tensor.Tensor, error) {
	var src []byte
	switch {
	case x.DType == tensor.Bytes && len(x.Strings) == 1:
		src = x.Strings[0]
	case x.DType == tensor.Uint8 && len(x.Shape) == 1:
		src = x.Data
	default:
		return nil, invalid("image_decode of %v %v: want one BYTES element or UINT8 bytes", x.DType, x.Shape)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("image header: %w", err)
	}
	// The decoder's own buffer takes up to 4 bytes a pixel (8 for 16-bit).
	if err := s.charge(int64(cfg.Width) * int64(cfg.Height) * 8); err != nil {
		return nil, fmt.Errorf("%s image of %dx%d: %w", format, cfg.Width, cfg.Height, err)
	}
	img, _, err := image.Decode(bytes.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", format, err)
	}
	b := img.Bounds()
	y, err := s.alloc(x.Name, tensor.Uint8, int64(b.Dy()), int64(b.Dx()), 3)
	if err != nil {
		return nil, err
	}
	out, w := y.Data, b.Dx()
	switch m := img.(type) {
	case *image.NRGBA:
		for r := range b.Dy() {
			off := m.PixOffset(b.Min.X, b.Min.Y+r)
			row := m.Pix[off : off+4*w]
			o := out[r*w*3:]
			for i := range w {
				o[3*i], o[3*i+1], o[3*i+2] = row[4*i], row[4*i+1], row[4*i+2]
			}
		}
	case *image.Gray:
		for r := range b.Dy() {
			off := m.PixOffset(b.Min.X, b.Min.Y+r)
			row := m.Pix[off : off+w]
			o := out[r*w*3:]
			for i, v := range row {
				o[3*i], o[3*i+1], o[3*i+2] = v, v, v
			}
		}
	default:
		// RGBA (premultiplied; opaque images are unchanged), YCbCr and
		// the rest: convert once through draw.
		rgba, ok := img.(*image.RGBA)
		if !ok {
			rgba = image.NewRGBA(image.Rect(0, 0, w, b.Dy()))
			draw.Draw(rgba, rgba.Bounds(), img, b.Min, draw.Src)
		}
		rb := rgba.Bounds()
		for r := range b.Dy() {
			off := rgba.PixOffset(rb.Min.X, rb.Min.Y+r)
			row := rgba.Pix[off : off+4*w]
			o := out[r*w*3:]
			for i := range w {
				o[3*i], o[3*i+1], o[3*i+2] = row[4*i], row[4*i+1], row[4*i+2]
			}
		}
	}
	return y, nil
}
