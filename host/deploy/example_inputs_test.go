package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// goImage reads one of Go's own image test files (a CMYK or progressive
// JPEG, which image/jpeg cannot write).
func goImage(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", "image", "testdata", rel))
	if err != nil {
		t.Fatalf("Go's image testdata: %v", err)
	}
	return b
}

func encodePNG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The PP-OCR pipeline on the images users send: every kind decodes, and
// what does not decode is the guest's error naming the image (never a trap,
// which throws the instance away).
func TestPPOCRPreUserImages(t *testing.T) {
	n := newGuestNode(t)
	if st := n.deploy(t, "ocr", ocrSpec(n, t, "0,180")); !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	d, _ := n.m.Get("ocr")
	one := encodePNG(t, image.NewGray(image.Rect(0, 0, 1, 1)))
	pal := image.NewPaletted(image.Rect(0, 0, 30, 20), color.Palette{color.Black, color.White})
	for _, tc := range []struct {
		name  string
		files [][]byte
		err   string // "" when the request succeeds
	}{
		{"gray 1x1", [][]byte{one}, ""},
		{"10000x10", [][]byte{encodePNG(t, image.NewGray(image.Rect(0, 0, 10000, 10)))}, ""},
		{"10x10000", [][]byte{encodePNG(t, image.NewGray(image.Rect(0, 0, 10, 10000)))}, ""},
		{"16-bit", [][]byte{encodePNG(t, image.NewNRGBA64(image.Rect(0, 0, 30, 20)))}, ""},
		{"palette", [][]byte{encodePNG(t, pal)}, ""},
		{"cmyk jpeg", [][]byte{goImage(t, "video-001.cmyk.jpeg")}, ""},
		{"progressive jpeg", [][]byte{goImage(t, "video-001.progressive.jpeg")}, ""},
		{"gray jpeg", [][]byte{goImage(t, "video-005.gray.jpeg")}, ""},
		{"several", [][]byte{one, goImage(t, "video-001.q50.420.progressive.jpeg"), encodePNG(t, pal)}, ""},
		{"empty element", [][]byte{{}}, "image header"},
		{"not an image", [][]byte{[]byte("hello")}, "image header"},
		{"gif", [][]byte{goImage(t, "video-001.gif")}, "PNG and JPEG"},
		// Which of several images is wrong is said.
		{"empty second", [][]byte{one, {}}, "image 1 of 2"},
		{"no image", [][]byte{}, "no image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outs, err := d.Infer(context.Background(), []*tensor.Tensor{strTensor("image", tc.files...)}, nil)
			if tc.err != "" {
				if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want the guest's error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := []int64{int64(len(tc.files)), 1}; !reflect.DeepEqual(outs[0].Shape, want) || !reflect.DeepEqual(outs[1].Shape, want) {
				t.Fatalf("outputs %v %v, want %v", outs[0].Shape, outs[1].Shape, want)
			}
		})
	}
	if st := d.Status(); !st.State.Serving() {
		t.Fatalf("after the requests: %v %s", st.State, st.Message)
	}
}

// Several photos in one request fit in the guest when each does: the
// preprocess guest copied every file twice (read, then encoded again as a
// BYTES tensor per image) and kept the last request's copies as garbage,
// so three 5.7 MB images ran a 32 MiB guest out of memory (a trap: the
// instance thrown away) after a request of two had succeeded.
func TestPPOCRPreSeveralLargeImages(t *testing.T) {
	n := newGuestNodeTimeout(t, time.Minute) // guests of 512 pages: 32 MiB
	if st := n.deploy(t, "ocr", ocrSpec(n, t, "0,180")); !st.State.Serving() {
		t.Fatalf("deploy: %v %s", st.State, st.Message)
	}
	d, _ := n.m.Get("ocr")
	img := image.NewNRGBA(image.Rect(0, 0, 1200, 1200))
	rand.New(rand.NewSource(1)).Read(img.Pix) // incompressible: 5.7 MB
	file := encodePNG(t, img)
	for _, k := range []int{1, 2, 3, 4, 4, 4} {
		files := make([][]byte, k)
		for i := range files {
			files[i] = file
		}
		outs, err := d.Infer(context.Background(), []*tensor.Tensor{strTensor("image", files...)}, nil)
		if err != nil {
			t.Fatalf("%d images of %d bytes: %v", k, len(file), err)
		}
		if want := []int64{int64(k), 1}; !reflect.DeepEqual(outs[0].Shape, want) {
			t.Fatalf("%d images: labels %v, want %v", k, outs[0].Shape, want)
		}
	}
}

// cls-post declares its outputs [N, k]: a model's scores of rank 1 (one
// row) come back as [1, k], not [k], and scores of another rank, or of no
// class, are refused saying so, instead of labels of a rank the metadata
// does not give (or the host's topk complaining about k).
func TestClsPostScoresRank(t *testing.T) {
	n := newGuestNode(t)
	post := n.wasm(t, "guests/examples/cls-post")
	for _, tc := range []struct {
		name   string
		shape  []int64 // the model's
		in     []int64
		labels []string
		err    string
	}{
		{"rank 2", []int64{-1, 3}, []int64{2, 3}, []string{"été", "日本", "été", "日本"}, ""},
		{"rank 1", []int64{-1}, []int64{3}, []string{"été", "日本"}, ""},
		{"rank 3", []int64{-1, 2, 3}, []int64{1, 2, 3}, nil, "shape [1 2 3]: want [N, C]"},
		{"no class", []int64{-1, 0}, []int64{2, 0}, nil, "no classes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(tc.name, " ", "-")
			st := n.deploy(t, id, deploy.Spec{Name: id, Format: "onnx", Model: n.file(t, id+".onnx", onnxtest.Identity(onnxtest.Float, tc.shape)),
				Batching: engine.Config{MaxBatchSize: 1},
				Config:   map[string]string{"labels": "a,日本,été", "top_k": "2"},
				Guests:   []deploy.Guest{{Name: "post", Artifact: post, Roles: []string{"postprocess"}}}})
			if !st.State.Serving() {
				t.Fatalf("deploy: %v %s", st.State, st.Message)
			}
			d, _ := n.m.Get(id)
			x := tensor.New("x", tensor.FP32, tc.in...)
			for i, v := range tensor.View[float32](x) {
				tensor.View[float32](x)[i] = v + float32(i%3)
			}
			outs, err := d.Infer(context.Background(), []*tensor.Tensor{x}, nil)
			if tc.err != "" {
				if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want the guest's error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var labels []string
			for _, s := range outs[0].Strings {
				labels = append(labels, string(s))
			}
			rows := int64(len(tc.labels) / 2)
			if !reflect.DeepEqual(labels, tc.labels) || !reflect.DeepEqual(outs[0].Shape, []int64{rows, 2}) || !reflect.DeepEqual(outs[1].Shape, []int64{rows, 2}) {
				t.Fatalf("labels %q %v scores %v, want %q [%d 2]", labels, outs[0].Shape, outs[1].Shape, tc.labels, rows)
			}
		})
	}
}
