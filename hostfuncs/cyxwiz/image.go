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
// a rank-1 UINT8 tensor) into UINT8 RGB pixels shaped [H, W, 3]. The
// decoder's memory is estimated from the header and charged (as working
// memory, given back after) before decoding, so a small file that claims a
// huge image fails with ErrLimit instead of taking the memory. The decoders
// cannot be stopped, so their work is bounded up front instead: a
// progressive JPEG whose scans would make the decoder visit too many pixels
// is refused.
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
	pixels := int64(cfg.Width) * int64(cfg.Height)
	// The decoded image takes up to 8 bytes a pixel (16-bit PNG), its
	// conversion to 8-bit NRGBA 4 more.
	perPixel := int64(8 + 4)
	if format == "jpeg" {
		j := scanJPEG(src)
		// One byte a pixel per component; a progressive JPEG also keeps
		// every coefficient (4 bytes a pixel per component) and is decoded
		// once per scan, each visiting the whole image.
		perPixel = int64(j.components) + 4
		if j.progressive {
			perPixel += 4 * int64(j.components)
			if work := int64(j.scans) * pixels; work > maxScanWork {
				return nil, fmt.Errorf("%w: progressive JPEG of %dx%d with %d scans: more decoding work than %d scans of 16 MP",
					errInvalid, cfg.Width, cfg.Height, j.scans, maxScanWork/(16<<20))
			}
		}
	}
	if pixels > s.lim.MaxBytes/perPixel {
		s.hit = true
		return nil, fmt.Errorf("%s image of %dx%d: %w", format, cfg.Width, cfg.Height, ErrLimit)
	}
	refund, err := s.scratch(pixels * perPixel)
	if err != nil {
		return nil, fmt.Errorf("%s image of %dx%d: %w", format, cfg.Width, cfg.Height, err)
	}
	defer refund()
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
		// YCbCr, CMYK, 16-bit, paletted and the rest: convert once to
		// 8-bit NRGBA, which keeps the colour of a translucent pixel as it
		// is (as the NRGBA case does), whatever the file's format.
		nrgba := image.NewNRGBA(image.Rect(0, 0, w, b.Dy()))
		draw.Draw(nrgba, nrgba.Bounds(), img, b.Min, draw.Src)
		for r := range b.Dy() {
			row := nrgba.Pix[r*nrgba.Stride : r*nrgba.Stride+4*w]
			o := out[r*w*3:]
			for i := range w {
				o[3*i], o[3*i+1], o[3*i+2] = row[4*i], row[4*i+1], row[4*i+2]
			}
		}
	}
	return y, nil
}

// maxScanWork bounds scans × pixels of a progressive JPEG: Go's decoder
// visits every block of the image for every scan (~5 ms a scan at 16 MP
// here), and cannot be stopped at the call's deadline. 16 scans of 16 MP;
// encoders write about 10 scans.
const maxScanWork = 16 * 16 << 20

// jpegInfo is what decodeImage needs from a JPEG's markers.
type jpegInfo struct {
	progressive bool
	components  int
	scans       int
}

// scanJPEG reads the frame header and counts the scans of a JPEG. Inside
// entropy-coded data 0xFF is always followed by 0x00 or a restart marker,
// so every 0xFF 0xDA in the file starts a scan (or sits in a metadata
// segment, such as an embedded thumbnail: counted too, which only errs on
// the safe side). Anything it cannot read is assumed to be the worst case.
func scanJPEG(src []byte) jpegInfo {
	info := jpegInfo{progressive: true, components: 4, scans: bytes.Count(src, []byte{0xFF, 0xDA})}
	for i := 2; i+4 <= len(src) && src[i] == 0xFF; {
		m := src[i+1]
		switch {
		case m == 0xFF: // fill byte
			i++
			continue
		case m == 0x01 || (m >= 0xD0 && m <= 0xD9): // no length
			i += 2
			continue
		case m == 0xDA: // start of scan: the frame header came before
			return info
		}
		n := int(src[i+2])<<8 | int(src[i+3])
		if m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC && i+10 <= len(src) {
			info.progressive = m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE
			info.components = min(max(int(src[i+9]), 1), 4)
			return info
		}
		i += 2 + n
	}
	return info
}
