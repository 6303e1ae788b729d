package tensor

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The raw layout of BYTES elements (KServe v2 raw_input_contents and
// raw_output_contents): each element as a little-endian uint32 length
// followed by its bytes.

// ErrMalformedStrings: raw BYTES content that does not split into elements.
var ErrMalformedStrings = errors.New("malformed raw BYTES content")

// AppendStrings appends s in the raw BYTES layout.
func AppendStrings(dst []byte, s [][]byte) []byte {
	for _, e := range s {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(e)))
		dst = append(dst, e...)
	}
	return dst
}

// StringsSize is the length of s in the raw BYTES layout.
func StringsSize(s [][]byte) int {
	n := 4 * len(s)
	for _, e := range s {
		n += len(e)
	}
	return n
}

// SplitStrings splits raw BYTES content into its elements, which alias b.
// want is the number of elements expected, or -1 for any.
func SplitStrings(b []byte, want int64) ([][]byte, error) {
	var out [][]byte
	if want >= 0 {
		if want > int64(len(b)/4) {
			return nil, fmt.Errorf("%w: %d elements cannot fit in %d bytes", ErrMalformedStrings, want, len(b))
		}
		out = make([][]byte, 0, want)
	}
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: truncated in a length prefix", ErrMalformedStrings)
		}
		n := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: an element of %d bytes runs past the end", ErrMalformedStrings, n)
		}
		out = append(out, b[:n:n])
		b = b[n:]
	}
	if want >= 0 && int64(len(out)) != want {
		return nil, fmt.Errorf("%w: the shape needs %d elements, the content holds %d", ErrMalformedStrings, want, len(out))
	}
	return out, nil
}
