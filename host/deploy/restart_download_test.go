package deploy_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
)

// The Central Server changes a deployment's guest config while its model
// is half downloaded: the node starts it again with the new guests, and the
// model's download goes on (or resumes) rather than starting over. The
// stop of the old run was the download's last waiter: the partial file was
// thrown away and the model fetched again from its first byte (a
// multi-gigabyte model, all over again, for a label change).
func TestGuestChangeWhileFetchingKeepsTheDownload(t *testing.T) {
	n := newGuestNode(t)
	srv := artifacttest.New(t)
	model, err := os.ReadFile(loadertest.NativeLib(t, "models/ppocr-cls.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	first := ocrSpec(n, t, "0,180")
	first.Model = srv.Add("/cls.onnx", model)
	release := srv.Stall("/cls.onnx")
	defer release()
	if _, err := n.m.Assign("ocr", first, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the model download did not start")
	}

	srv.Unstall("/cls.onnx") // the first request stays stalled; later ones are answered
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The first half is on its way: wait until some of it is on disk (the
	// deployment's progress is throttled, and may say 0 until the end).
	part := filepath.Join(n.dir, "artifacts", "tmp", first.Model.SHA256+".part")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if fi, err := os.Stat(part); err == nil && fi.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no byte of the model reached the cache")
		}
	}

	next := first
	next.Config = map[string]string{"labels": "upright,flipped"}
	if _, err := n.m.AssignContext(ctx, "ocr", next, deploy.OwnerCentral); err != nil {
		t.Fatalf("guest change while fetching: %v", err)
	}
	st, err := n.m.WaitFor(ctx, "ocr", deploy.Settled)
	if err != nil || !st.State.Serving() || !st.Spec.Equal(next) {
		t.Fatalf("after the change: %v %v (%s)", err, st.State, st.Message)
	}
	ranges := srv.Ranges("/cls.onnx")
	var from int
	if len(ranges) != 2 {
		t.Fatalf("%d requests for the model (ranges %q), want 2", len(ranges), ranges)
	}
	if _, err := fmt.Sscanf(ranges[1], "bytes=%d-", &from); err != nil || from <= 0 || from > len(model)/2 {
		t.Errorf("the second request for the model asked for %q: want it to resume where the first was cut (at most byte %d)", ranges[1], len(model)/2)
	}
}
