package main

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
)

// startGuestNode serves no deployment yet, with ONNX Runtime and a guest
// runtime.
func startGuestNode(t *testing.T) string {
	t.Helper()
	rt, err := guest.NewRuntime(context.Background(), guest.Config{
		CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache"), MemoryLimitPages: 1024, CallTimeout: 5 * time.Second,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) }) // after the node's own cleanup
	addr, _ := serveNode(t, deploy.Config{Guests: rt, GuestInstances: 1})
	return addr
}

// The model author's path: build guests, deploy them with cyxwizctl next to
// the PP-OCR classifier, send an image, read labels.
func TestDeployGuestsAndInferImage(t *testing.T) {
	addr := startGuestNode(t)
	model := loadertest.NativeLib(t, "models/ppocr-cls.onnx")
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pre := write("pre.wasm", guesttest.Build(t, "guests/examples/ppocr-pre"))
	post := write("post.wasm", guesttest.Build(t, "guests/examples/cls-post"))

	img := image.NewGray(image.Rect(0, 0, 160, 32)) // dark strokes on white, like a text line
	for y := range 32 {
		for x := range 160 {
			c := uint8(255)
			if y > 8 && y < 24 && x%12 < 4 {
				c = 20
			}
			img.SetGray(x, y, color.Gray{Y: c})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	pic := write("line.png", buf.Bytes())

	code, out, errOut := ctl("--addr", addr, "deploy", "--id", "ocr", "--model", model, "--pre", pre, "--post", post,
		"--config", "labels=0,180", "--guest-memory-pages", "512")
	if code != 0 || !strings.Contains(out, "ocr: ready") {
		t.Fatalf("deploy: %d %q %q", code, out, errOut)
	}
	// Clients are told what the guests take and give, not the model's
	// FP32 tensors behind them.
	code, out, errOut = ctl("--addr", addr, "metadata", "ocr")
	if code != 0 || !strings.Contains(out, "input:    image BYTES [-1]\n") || !strings.Contains(out, "output:   label BYTES [-1 -1]\noutput:   score FP32 [-1 -1]\n") ||
		!strings.Contains(out, "onnxruntime_onnx") {
		t.Fatalf("metadata: %d %q %q", code, out, errOut)
	}
	if code, _, errOut = ctl("--addr", addr, "metadata", "nope"); code != 1 || !strings.Contains(errOut, "nope") {
		t.Fatalf("metadata of an unknown model: %d %q", code, errOut)
	}
	code, out, errOut = ctl("--addr", addr, "infer", "ocr", "--image", pic)
	if code != 0 || !(strings.Contains(out, "label BYTES [1 1]: [0]") || strings.Contains(out, "label BYTES [1 1]: [180]")) || !strings.Contains(out, "score FP32 [1 1]") {
		t.Fatalf("infer --image: %d %q %q", code, out, errOut)
	}
	// A guest over the node's memory limit is refused with the reason.
	code, _, errOut = ctl("--addr", addr, "deploy", "--id", "big", "--model", model, "--pre", pre, "--guest-memory-pages", "4096")
	if code != 1 || !strings.Contains(errOut, "memory_limit_pages is 4096") {
		t.Fatalf("over the limit: %d %q", code, errOut)
	}
}
