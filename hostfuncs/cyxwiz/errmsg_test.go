package cyxwiz

import (
	"bytes"
	"image"
	"image/png"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// An image the host cannot decode is the guest's input, EINVAL (it was
// EIO, the host's own trouble): a BMP, a truncated PNG, garbage. The message says
// what is decoded, and does not repeat the errno's "invalid argument".
func TestImageDecodeRefusalsAreEINVAL(t *testing.T) {
	// A BMP header (no BMP decoder is registered).
	bmp := append([]byte("BM"), make([]byte, 60)...)
	var pb bytes.Buffer
	if err := png.Encode(&pb, image.NewGray(image.Rect(0, 0, 64, 64))); err != nil {
		t.Fatal(err)
	}
	pngData := pb.Bytes()
	for name, tc := range map[string]struct {
		src  []byte
		want string
	}{
		"bmp":           {bmp, "PNG and JPEG are decoded"},
		"truncated png": {pngData[:len(pngData)-20], "decode png"},
		"garbage":       {[]byte("not an image at all"), "image header"},
	} {
		t.Run(name, func(t *testing.T) {
			s := NewSession(Env{})
			_, err := s.decodeImage(tensor.FromSlice("img", tensor.Uint8, []int64{int64(len(tc.src))}, tc.src))
			if err == nil {
				t.Fatal("decoded")
			}
			if e := s.errno(err); e != int32(abi.EINVAL) {
				t.Fatalf("errno %d (%v), want EINVAL", e, err)
			}
			if !strings.Contains(s.errMsg, tc.want) || strings.HasPrefix(s.errMsg, "invalid argument") {
				t.Errorf("last_error %q: want it to say %q, without repeating the errno", s.errMsg, tc.want)
			}
		})
	}
}

// last_error cuts long messages at a character: cut at byte 4096, a
// multi-byte one was split and the message was not UTF-8.
func TestLastErrorCutAtACharacter(t *testing.T) {
	s := NewSession(Env{})
	s.fail(abi.EINVAL, "%s", strings.Repeat("a", maxErrMsg-1)+"é and more")
	if !utf8.ValidString(s.errMsg) || !strings.HasSuffix(s.errMsg, "a…") {
		t.Errorf("cut message ends %q (valid UTF-8: %v)", s.errMsg[len(s.errMsg)-8:], utf8.ValidString(s.errMsg))
	}
}
