package cyxwiz

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
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
// cannot be stopped, so their work is bounded up front instead: a JPEG
// whose scans would make the decoder visit too many pixels is refused.
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
	// What does not decode is the guest's input (EINVAL), not the host's
	// trouble (EIO).
	cfg, format, err := image.DecodeConfig(bytes.NewReader(src))
	if errors.Is(err, image.ErrFormat) {
		return nil, invalid("image header: %v (PNG and JPEG are decoded)", err)
	}
	if err != nil {
		return nil, invalid("image header: %v", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, invalid("%s image of %dx%d", format, cfg.Width, cfg.Height)
	}
	need, err := decodeCost(src, format, cfg)
	if err != nil {
		return nil, err
	}
	// The result first: an image whose pixels do not fit is not decoded.
	y, err := s.alloc(x.Name, tensor.Uint8, int64(cfg.Height), int64(cfg.Width), 3)
	if err != nil {
		return nil, fmt.Errorf("%s image of %dx%d: %w", format, cfg.Width, cfg.Height, err)
	}
	refund, err := s.scratch(need)
	if err != nil {
		return nil, fmt.Errorf("decoding a %s image of %dx%d: %w", format, cfg.Width, cfg.Height, err)
	}
	defer refund()
	img, _, err := image.Decode(bytes.NewReader(src))
	if err != nil {
		return nil, invalid("decode %s: %v", format, err)
	}
	b := img.Bounds()
	if b.Dx() != cfg.Width || b.Dy() != cfg.Height {
		return nil, invalid("decode %s: %dx%d image, its header said %dx%d", format, b.Dx(), b.Dy(), cfg.Width, cfg.Height)
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
	case *image.NRGBA64:
		// 16-bit with alpha: the high byte of each stored sample, as PIL.
		// Going through premultiplied RGBA (draw) turned a pixel of alpha
		// 0 black and one of alpha 1 off by one.
		for r := range b.Dy() {
			off := m.PixOffset(b.Min.X, b.Min.Y+r)
			row := m.Pix[off : off+8*w]
			o := out[r*w*3:]
			for i := range w {
				o[3*i], o[3*i+1], o[3*i+2] = row[8*i], row[8*i+2], row[8*i+4]
			}
		}
	case *image.Paletted:
		// A palette with tRNS holds straight (NRGBA) colours: each entry's
		// colour as stored, as PIL, not premultiplied and back.
		var lut [256][3]byte // an index past the palette: black, as image/png
		for i, c := range m.Palette[:min(len(m.Palette), 256)] {
			n := color.NRGBAModel.Convert(c).(color.NRGBA)
			if nc, ok := c.(color.NRGBA); ok {
				n = nc
			}
			lut[i] = [3]byte{n.R, n.G, n.B}
		}
		for r := range b.Dy() {
			off := m.PixOffset(b.Min.X, b.Min.Y+r)
			row := m.Pix[off : off+w]
			o := out[r*w*3:]
			for i, v := range row {
				c := lut[v]
				o[3*i], o[3*i+1], o[3*i+2] = c[0], c[1], c[2]
			}
		}
	default:
		// YCbCr, CMYK, RGBA, RGBA64, Gray16: opaque, so converting once
		// to 8-bit NRGBA through premultiplied colour changes nothing.
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

// maxScanWork bounds scans × padded pixels of a JPEG: Go's decoder
// visits every block of every component it covers for every scan (up to
// ~1 ns a pixel for a progressive refinement scan here, ~4 ns for a
// baseline one) and cannot be stopped at the call's deadline: at most
// ~0.3 s (~1 s baseline). That is 16 scans of 16 MP; encoders write about
// 10 scans, 1 to 3 when baseline.
const maxScanWork = 16 * 16 << 20

// decodeCost is the most memory Go's decoder takes for src beyond the
// result (which the caller charges): the decoded image and its conversion to
// 8-bit NRGBA, and for a progressive JPEG every coefficient. It refuses a
// JPEG that would take too long (maxScanWork). It reads the file
// conservatively: whatever it cannot be sure of counts as the worst case.
func decodeCost(src []byte, format string, cfg image.Config) (int64, error) {
	w, h := int64(cfg.Width), int64(cfg.Height)
	if format != "jpeg" {
		return pngCost(src, cfg.ColorModel, w*h), nil
	}
	j := scanJPEG(src, w, h)
	// Baseline scans count too: image/jpeg decodes every scan it is
	// given, a component again and again, each time doing an inverse DCT
	// of every block (~4 ns a pixel): an 800 KB baseline JPEG of 200 scans
	// of 1 MP, two bits a block, held the host a second.
	if work := int64(j.scans) * j.samples; work > maxScanWork {
		return 0, fmt.Errorf("%w: JPEG of %dx%d with %d scans: more decoding work than %d scans of 16 MP",
			errInvalid, cfg.Width, cfg.Height, j.scans, maxScanWork/(16<<20))
	}
	return j.cost, nil
}

// pngCost is what image/png allocates for a PNG of pixels in model, plus
// its conversion to NRGBA where decodeImage needs one: an interlaced file
// is decoded pass by pass into images as large as the whole.
func pngCost(src []byte, model color.Model, pixels int64) int64 {
	var bpp, convert int64 = 8, 4 // unknown models: the worst case
	switch model {
	case color.GrayModel:
		bpp, convert = 1, 0
	case color.Gray16Model:
		bpp = 2
	case color.NRGBAModel:
		bpp, convert = 4, 0
	case color.RGBAModel:
		bpp = 4
	case color.NRGBA64Model:
		bpp, convert = 8, 0
	case color.RGBA64Model:
		bpp = 8
	default:
		if _, ok := model.(color.Palette); ok {
			bpp, convert = 1, 0
		}
	}
	// IHDR's interlace method is byte 28 of the file.
	if len(src) <= 28 || src[28] != 0 {
		bpp *= 2
	}
	return pixels * (bpp + convert)
}

// jpegInfo is what decodeCost needs from a JPEG.
type jpegInfo struct {
	progressive bool
	scans       int
	samples     int64 // the planes' samples, padded to whole MCUs
	cost        int64 // bytes the decoder and the conversion take
}

// scanJPEG reads what decodeCost needs from a JPEG without following its
// structure, so that no arrangement of segments can hide anything: every
// 0xFF 0xDA counts as a scan, and every well-formed frame header (SOF0-2)
// anywhere in the file is costed, the dearest winning. Inside entropy-coded
// data 0xFF is always followed by 0x00 or a restart marker, so this can
// only overestimate (for marker-like bytes in metadata): the safe side. A
// file with no well-formed frame header is costed as the worst case.
func scanJPEG(src []byte, w, h int64) jpegInfo {
	worst := jpegInfo{progressive: true, samples: 4 * pad(w, 32) * pad(h, 32)}
	worst.cost = worst.samples*5 + w*h*8
	var info jpegInfo
	found := false
	adobe := bytes.Contains(src, []byte("Adobe"))
	for i := 0; i+1 < len(src); i++ {
		if src[i] != 0xFF {
			continue
		}
		switch m := src[i+1]; m {
		case 0xDA:
			info.scans++
			worst.scans++
		case 0xC0, 0xC1, 0xC2:
			f, ok := frameCost(src[i+2:], w, h, m == 0xC2, adobe)
			if ok && (!found || f.cost > info.cost) {
				info.progressive, info.samples, info.cost = f.progressive, f.samples, f.cost
				found = true
			} else if ok && f.progressive {
				info.progressive = true
				info.samples = max(info.samples, f.samples)
			}
		}
	}
	if !found {
		return worst
	}
	return info
}

// frameCost costs the frame header b (after its marker) for an image of
// w×h, as image/jpeg allocates: a plane per component at its sampling
// (padded to whole MCUs), an int32 per coefficient when progressive, and
// the conversions to NRGBA (one 4-byte-a-pixel image; one more for CMYK and
// RGB-coded files, which the decoder converts on its way).
func frameCost(b []byte, w, h int64, progressive, adobe bool) (jpegInfo, bool) {
	if len(b) < 8 {
		return jpegInfo{}, false
	}
	n := int(b[7])
	if n < 1 || n > 4 || int(b[0])<<8|int(b[1]) != 8+3*n || len(b) < 8+3*n {
		return jpegInfo{}, false
	}
	comps := b[8 : 8+3*n]
	var hmax, vmax int64 = 1, 1
	for c := range n {
		hs, vs := int64(comps[3*c+1]>>4), int64(comps[3*c+1]&15)
		if hs < 1 || hs > 4 || vs < 1 || vs > 4 {
			return jpegInfo{}, false
		}
		hmax, vmax = max(hmax, hs), max(vmax, vs)
	}
	mxx, myy := (w+8*hmax-1)/(8*hmax), (h+8*vmax-1)/(8*vmax)
	f := jpegInfo{progressive: progressive}
	for c := range n {
		hs, vs := int64(comps[3*c+1]>>4), int64(comps[3*c+1]&15)
		f.samples += mxx * hs * 8 * myy * vs * 8
	}
	f.cost = f.samples // a byte a sample
	if progressive {
		f.cost += 4 * f.samples
	}
	rgb := n == 3 && comps[0] == 'R' && comps[3] == 'G' && comps[6] == 'B'
	switch {
	case n == 1: // image.Gray: no conversion
	case n == 4 || rgb || adobe:
		f.cost += 8 * w * h
	default:
		f.cost += 4 * w * h
	}
	return f, true
}

// pad rounds n up to a multiple of m.
func pad(n, m int64) int64 { return (n + m - 1) / m * m }
