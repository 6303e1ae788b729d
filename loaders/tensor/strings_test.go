package tensor

import (
	"errors"
	"slices"
	"testing"
)

func TestStringsRoundTrip(t *testing.T) {
	for _, s := range [][][]byte{nil, {{}}, {[]byte("a"), {}, []byte("hello, world")}} {
		b := AppendStrings(nil, s)
		if len(b) != StringsSize(s) {
			t.Fatalf("size %d, StringsSize %d", len(b), StringsSize(s))
		}
		got, err := SplitStrings(b, int64(len(s)))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, s, func(a, b []byte) bool { return string(a) == string(b) }) {
			t.Fatalf("got %q, want %q", got, s)
		}
		if got, err := SplitStrings(b, -1); err != nil || len(got) != len(s) {
			t.Fatalf("any count: %q %v", got, err)
		}
	}
}

func TestSplitStringsRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		b    []byte
		want int64
	}{
		"truncated prefix": {[]byte{1, 0}, -1},
		"runs past":        {[]byte{9, 0, 0, 0, 'a'}, -1},
		"too few":          {AppendStrings(nil, [][]byte{[]byte("a")}), 2},
		"too many":         {AppendStrings(nil, [][]byte{[]byte("a"), []byte("b")}), 1},
		"count cannot fit": {[]byte{0, 0, 0, 0}, 1 << 40},
	} {
		if _, err := SplitStrings(tc.b, tc.want); !errors.Is(err, ErrMalformedStrings) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func FuzzSplitStrings(f *testing.F) {
	f.Add(AppendStrings(nil, [][]byte{[]byte("ab"), {}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := SplitStrings(b, -1)
		if err != nil {
			return
		}
		if again := AppendStrings(nil, s); string(again) != string(b) {
			t.Fatal("split then append differs")
		}
	})
}
