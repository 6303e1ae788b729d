package guest

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Go's wasm linker writes a module's static data as tens of thousands of
// tiny active data segments (31,949 averaging 24 bytes for cls-post), and
// wazero evaluates each segment's offset expression with a few allocations
// at every instantiation: about half of a warm instantiate. mergeData
// rewrites the data section into a few large segments with the same
// effect on memory, before the module is compiled.
//
// It only rewrites what it fully understands: every segment active in
// memory 0 at an i32.const offset, no two overlapping, and
// no data count section (whose presence means code may name segments by
// index). Anything else, or any malformed byte, returns the module
// unchanged for wazero to judge.

const (
	sectionData      = 11
	sectionDataCount = 12
	opI32Const       = 0x41
	opEnd            = 0x0b
	// mergeGap is the largest run of zeros written to join two segments:
	// memory starts zeroed, so a gap filled with zeros changes nothing.
	mergeGap = 4 << 10
)

var errNotMergeable = errors.New("data section not mergeable")

// section is one section of a module: its id byte is at wasm[at], its
// contents are wasm[start:end].
type section struct {
	id             byte
	at, start, end int
}

// sections lists a module's sections, checking only their headers.
func sections(wasm []byte) ([]section, error) {
	if len(wasm) < 8 || string(wasm[:4]) != "\x00asm" {
		return nil, errors.New("not a WebAssembly module")
	}
	var out []section
	for pos := 8; pos < len(wasm); {
		size, n := binary.Uvarint(wasm[pos+1:])
		if n <= 0 || size > uint64(len(wasm)-pos-1-n) {
			return nil, errors.New("malformed section header")
		}
		start := pos + 1 + n
		out = append(out, section{id: wasm[pos], at: pos, start: start, end: start + int(size)})
		pos = start + int(size)
	}
	return out, nil
}

// find returns the first section with id.
func find(secs []section, id byte) (section, bool) {
	for _, s := range secs {
		if s.id == id {
			return s, true
		}
	}
	return section{}, false
}

// replace returns wasm with the contents of s replaced by body.
func replace(wasm []byte, s section, body []byte) []byte {
	out := make([]byte, 0, len(wasm)-(s.end-s.at)+len(body)+binary.MaxVarintLen32+1)
	out = append(out, wasm[:s.at]...)
	out = append(out, s.id)
	out = binary.AppendUvarint(out, uint64(len(body)))
	out = append(out, body...)
	return append(out, wasm[s.end:]...)
}

// mergeData returns wasm with its data segments merged, and whether it
// changed anything.
func mergeData(wasm []byte) ([]byte, bool) {
	secs, err := sections(wasm)
	if err != nil {
		return wasm, false
	}
	if _, ok := find(secs, sectionDataCount); ok {
		return wasm, false
	}
	data, ok := find(secs, sectionData)
	if !ok {
		return wasm, false
	}
	segs, err := parseData(wasm[data.start:data.end])
	if err != nil || len(segs) < 2 {
		return wasm, false
	}
	merged, ok := joinSegments(segs)
	if !ok || len(merged) == len(segs) {
		return wasm, false
	}
	var body []byte
	body = binary.AppendUvarint(body, uint64(len(merged)))
	for _, s := range merged {
		body = append(body, 0, opI32Const)
		body = appendSleb32(body, int32(s.offset))
		body = append(body, opEnd)
		body = binary.AppendUvarint(body, uint64(len(s.data)))
		body = append(body, s.data...)
	}
	return replace(wasm, data, body), true
}

type segment struct {
	offset uint32
	data   []byte
}

// parseData reads a data section that holds only active segments of
// memory 0 at constant offsets.
func parseData(b []byte) ([]segment, error) {
	count, n := binary.Uvarint(b)
	if n <= 0 || count > uint64(len(b)) {
		return nil, errNotMergeable
	}
	b = b[n:]
	segs := make([]segment, 0, count)
	for range count {
		if len(b) < 2 || b[0] != 0 || b[1] != opI32Const { // flag 0: active, memory 0
			return nil, errNotMergeable
		}
		off, n := sleb32(b[2:])
		if n <= 0 || len(b) < 2+n+1 || b[2+n] != opEnd {
			return nil, errNotMergeable
		}
		b = b[2+n+1:]
		size, n := binary.Uvarint(b)
		if n <= 0 || size > uint64(len(b)-n) {
			return nil, errNotMergeable
		}
		data := b[n : n+int(size)]
		b = b[n+int(size):]
		segs = append(segs, segment{offset: uint32(off), data: data})
	}
	if len(b) != 0 {
		return nil, errNotMergeable
	}
	// Segments that do not overlap write the same memory in any order (Go's
	// linker does not sort them); overlapping ones depend on their order.
	slices.SortStableFunc(segs, func(a, b segment) int { return cmp.Compare(a.offset, b.offset) })
	for i := 1; i < len(segs); i++ {
		prev := segs[i-1]
		if uint64(prev.offset)+uint64(len(prev.data)) > uint64(segs[i].offset) {
			return nil, errNotMergeable
		}
	}
	return segs, nil
}

// joinSegments merges neighbours separated by at most mergeGap bytes. The
// zeros it adds may not outweigh the data itself (a hostile module of empty
// segments 4 KiB apart would otherwise grow a thousandfold): past that
// budget it gives up (ok false).
func joinSegments(segs []segment) (_ []segment, ok bool) {
	var data, fill uint64
	for _, s := range segs {
		data += uint64(len(s.data))
	}
	var out []segment
	for _, s := range segs {
		if len(out) > 0 {
			last := &out[len(out)-1]
			end := uint64(last.offset) + uint64(len(last.data))
			if gap := uint64(s.offset) - end; gap <= mergeGap {
				if fill += gap; fill > data {
					return nil, false
				}
				last.data = slices.Grow(last.data, int(gap)+len(s.data))
				last.data = append(last.data, make([]byte, gap)...)
				last.data = append(last.data, s.data...)
				continue
			}
		}
		out = append(out, segment{offset: s.offset, data: slices.Clone(s.data)})
	}
	return out, true
}

// sleb32 decodes a signed LEB128 i32; n <= 0 when malformed.
func sleb32(b []byte) (int32, int) {
	var v int64
	var shift uint
	for i := 0; i < len(b) && i < 5; i++ {
		c := b[i]
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			if v < -1<<31 || v > 1<<31-1 {
				return 0, -1
			}
			return int32(v), i + 1
		}
	}
	return 0, -1
}

func appendSleb32(b []byte, v int32) []byte {
	x := int64(v)
	for {
		c := byte(x & 0x7f)
		x >>= 7
		if (x == 0 && c&0x40 == 0) || (x == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

const sectionMemory = 5

// limitMemory returns wasm with its memory's maximum lowered to pages (a
// guest's own memory limit, below the runtime's): growing past it then
// fails inside the guest, which traps as out of memory. A module that
// imports its memory, declares none, or whose initial memory is already
// larger than pages is an error; so is anything this cannot parse.
func limitMemory(wasm []byte, pages uint32) ([]byte, error) {
	mem, lo, hi, err := memoryLimits(wasm)
	if err != nil {
		return nil, err
	}
	if err := checkInitialMemory(lo, pages); err != nil {
		return nil, err
	}
	body := []byte{1, 1}
	body = binary.AppendUvarint(body, lo)
	body = binary.AppendUvarint(body, min(hi, uint64(pages)))
	return replace(wasm, mem, body), nil
}

// checkInitialMemory refuses, with ErrMemory, an initial memory of lo
// pages over a limit of pages.
func checkInitialMemory(lo uint64, pages uint32) error {
	if lo > uint64(pages) {
		return fmt.Errorf("%w: the guest starts with %d pages of memory, its limit is %d", ErrMemory, lo, pages)
	}
	return nil
}

// memoryLimits returns the memory section of a module that declares one
// memory of its own, and that memory's minimum and maximum in pages (65536
// when it declares none).
func memoryLimits(wasm []byte) (mem section, lo, hi uint64, err error) {
	secs, err := sections(wasm)
	if err != nil {
		return section{}, 0, 0, err
	}
	mem, ok := find(secs, sectionMemory)
	if !ok {
		return section{}, 0, 0, errors.New("the module declares no memory of its own")
	}
	b := wasm[mem.start:mem.end]
	if len(b) < 2 {
		return section{}, 0, 0, errors.New("malformed memory section")
	}
	if b[0] != 1 {
		return section{}, 0, 0, fmt.Errorf("the memory section declares %d memories, want 1", b[0])
	}
	flags := b[1]
	if flags > 1 {
		return section{}, 0, 0, fmt.Errorf("memory limits flags %#x (shared or 64-bit memory) are not supported", flags)
	}
	lo, n := binary.Uvarint(b[2:])
	if n <= 0 || lo > 65536 {
		return section{}, 0, 0, errors.New("malformed memory minimum")
	}
	hi, rest := uint64(65536), b[2+n:]
	if flags == 1 {
		var m int
		if hi, m = binary.Uvarint(rest); m <= 0 || hi > 65536 {
			return section{}, 0, 0, errors.New("malformed memory maximum")
		}
		rest = rest[m:]
	}
	if len(rest) != 0 {
		return section{}, 0, 0, errors.New("trailing bytes in the memory section")
	}
	return mem, lo, hi, nil
}
