package cyxwiz

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"hash/crc32"
	"runtime"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Helpers of the zz_review2_* tests (review of 4d34ec0).

// jpegSpec describes a synthetic JPEG for the review tests.
type jpegSpec struct {
	w, h     int
	comps    int    // 1, 3 or 4
	sampling []byte // per component, 0xHV; default 0x11
	ids      []byte // component ids; default 1, 2, 3, 4
	scans    int    // progressive AC scans (each over one component, round robin)
	refine   bool   // AC scans are successive-approximation refinements (Ah=1, Al=0)
	baseline bool   // SOF0 with one interleaved DC+AC scan instead
	adobe    int    // -1: no APP14; else the Adobe transform byte
}

// buildJPEG writes a valid JPEG of all-zero coefficients: every block is
// one end-of-band run, so the file is tiny and the decoder still visits
// every block of every scan.
func buildJPEG(sp jpegSpec) []byte {
	var b bytes.Buffer
	seg := func(marker byte, body []byte) {
		b.Write([]byte{0xFF, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
		b.Write(body)
	}
	b.Write([]byte{0xFF, 0xD8})
	seg(0xDB, append([]byte{0}, bytes.Repeat([]byte{1}, 64)...))
	if sp.adobe >= 0 {
		seg(0xEE, []byte{'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, byte(sp.adobe)})
	}
	marker := byte(0xC2)
	if sp.baseline {
		marker = 0xC0
	}
	sof := []byte{8, byte(sp.h >> 8), byte(sp.h), byte(sp.w >> 8), byte(sp.w), byte(sp.comps)}
	for c := range sp.comps {
		hv, id := byte(0x11), byte(c+1)
		if sp.sampling != nil {
			hv = sp.sampling[c]
		}
		if sp.ids != nil {
			id = sp.ids[c]
		}
		sof = append(sof, id, hv, 0)
	}
	seg(marker, sof)
	id := func(c int) byte {
		if sp.ids != nil {
			return sp.ids[c]
		}
		return byte(c + 1)
	}
	// bit writer
	var data []byte
	var acc, nb uint32
	put := func(v uint32, n int) {
		for i := n - 1; i >= 0; i-- {
			acc, nb = acc<<1|(v>>uint(i))&1, nb+1
			if nb == 8 {
				data = append(data, byte(acc))
				if byte(acc) == 0xFF {
					data = append(data, 0)
				}
				acc, nb = 0, 0
			}
		}
	}
	flush := func() []byte {
		for nb != 0 {
			put(1, 1)
		}
		d := data
		data = nil
		return d
	}
	if sp.baseline {
		// DC table 0: one 1-bit code for category 0; AC table 0: one 1-bit code for EOB.
		dht := append([]byte{0x00, 1}, make([]byte, 15)...)
		dht = append(dht, 0x00)
		dht = append(dht, 0x10, 1)
		dht = append(dht, make([]byte, 15)...)
		dht = append(dht, 0x00)
		seg(0xC4, dht)
		hmax, vmax := 1, 1
		for c := range sp.comps {
			hv := byte(0x11)
			if sp.sampling != nil {
				hv = sp.sampling[c]
			}
			hmax, vmax = max(hmax, int(hv>>4)), max(vmax, int(hv&15))
		}
		mcus := ((sp.w + 8*hmax - 1) / (8 * hmax)) * ((sp.h + 8*vmax - 1) / (8 * vmax))
		perMCU := 0
		for c := range sp.comps {
			hv := byte(0x11)
			if sp.sampling != nil {
				hv = sp.sampling[c]
			}
			perMCU += int(hv>>4) * int(hv&15)
		}
		if sp.comps == 1 {
			perMCU = 1
		}
		// 2 zero bits a block: all zero bytes, no stuffing needed.
		ecs := make([]byte, (2*mcus*perMCU+7)/8)
		if r := (2 * mcus * perMCU) % 8; r != 0 {
			ecs[len(ecs)-1] = byte(0xFF >> r)
		}
		sos := []byte{byte(sp.comps)}
		for c := range sp.comps {
			sos = append(sos, id(c), 0x00)
		}
		sos = append(sos, 0, 63, 0)
		seg(0xDA, sos)
		b.Write(ecs)
		b.Write([]byte{0xFF, 0xD9})
		return b.Bytes()
	}
	dht := append([]byte{0x10, 1}, make([]byte, 15)...)
	seg(0xC4, append(dht, 0xE0)) // AC table 0: one 1-bit code, EOB run 2^14
	blocks := ((sp.w + 7) / 8) * ((sp.h + 7) / 8)
	for left := blocks; left > 0; left -= 32767 {
		put(0, 1)
		put(0x3FFF, 14)
	}
	ac := flush()
	al := byte(0)
	if sp.refine {
		al = 0x10
	}
	for i := range sp.scans {
		c := i % sp.comps
		seg(0xDA, []byte{1, id(c), 0x00, 1, 63, al})
		b.Write(ac)
	}
	b.Write([]byte{0xFF, 0xD9})
	return b.Bytes()
}

// hideProgressive puts "\xff\x00" after the SOI of src (image/jpeg skips it
// as extraneous data; scanJPEG reads the next two bytes, 0xFFDB, as a
// segment length) and a comment segment holding a fake baseline one-
// component SOF0 where scanJPEG's jump lands. image/jpeg decodes the file
// exactly as src.
func hideProgressive(src []byte) []byte {
	first := bytes.Index(src, []byte{0xFF, 0xDA})
	if first < 0 || src[2] != 0xFF || src[3] != 0xDB {
		panic("hideProgressive: unexpected layout")
	}
	var b bytes.Buffer
	b.Write([]byte{0xFF, 0xD8, 0xFF, 0x00})
	b.Write(src[2:first])
	target := 2 + 2 + 0xFFDB // where scanJPEG looks for the next marker
	bodyStart := b.Len() + 4
	body := make([]byte, target-bodyStart+16)
	copy(body[target-bodyStart:], []byte{0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x01, 0x00, 0x01, 0x01, 0x01, 0x11, 0x00})
	b.Write([]byte{0xFF, 0xFE, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
	b.Write(body)
	b.Write(src[first:])
	return b.Bytes()
}

// decodeCharged runs image_decode of src under limit and reports the
// result, what it allocated and the most it charged.
func decodeCharged(t *testing.T, src []byte, limit int64) (h int32, alloc, peak int64, took time.Duration, s *Session) {
	t.Helper()
	s = NewSession(Env{Limits: Limits{MaxBytes: limit}})
	in := s.Put(&tensor.Tensor{Name: "img", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{src}})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	h = hostImageDecode(context.Background(), s, nil, stack(in))
	took = time.Since(start)
	runtime.ReadMemStats(&after)
	return h, int64(after.TotalAlloc - before.TotalAlloc), s.peak, took, s
}

// pngAdam7 writes an interlaced PNG of w×h pixels of colour type ct and bit
// depth depth, all zero samples.
func pngAdam7(w, h int, ct, depth byte) []byte {
	chans := map[byte]int{0: 1, 2: 3, 4: 2, 6: 4}[ct]
	bpp := chans * int(depth) / 8
	var raw bytes.Buffer
	passes := [7][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}}
	for _, p := range passes {
		pw := (w - p[0] + p[2] - 1) / p[2]
		ph := (h - p[1] + p[3] - 1) / p[3]
		if pw <= 0 || ph <= 0 {
			continue
		}
		row := make([]byte, 1+pw*bpp)
		for range ph {
			raw.Write(row)
		}
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(raw.Bytes())
	zw.Close()
	var b bytes.Buffer
	b.Write([]byte("\x89PNG\r\n\x1a\n"))
	chunk := func(typ string, data []byte) {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(data)))
		b.Write(l[:])
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		b.Write([]byte(typ))
		b.Write(data)
		binary.BigEndian.PutUint32(l[:], crc.Sum32())
		b.Write(l[:])
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9], ihdr[10], ihdr[11], ihdr[12] = depth, ct, 0, 0, 1
	chunk("IHDR", ihdr)
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return b.Bytes()
}
