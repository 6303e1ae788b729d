package artifact_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// A download that gives up while waiting for a previous one to stop does
// not let a third start before that previous one has let go of the partial.
func TestChainedCancelsNeverOverlap(t *testing.T) {
	srv := artifacttest.New(t)
	content := blob(t, 64<<10)
	a := srv.Add("/m", content)
	release := srv.Stall("/m")
	c := newCache(t, t.TempDir(), 0)
	inHook, proceed, first := make(chan struct{}, 4), make(chan struct{}), true
	defer artifact.SetHookBeforeRemovePartial(func() {
		if first {
			first = false
			inHook <- struct{}{}
			<-proceed
		}
	})()
	ctx1, cancel1 := context.WithCancel(t.Context())
	err1 := make(chan error, 1)
	go func() { _, err := c.Fetch(ctx1, a, nil); err1 <- err }()
	<-srv.Stalled
	cancel1()
	receive(t, inHook, "the first download stopping")
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	err2 := make(chan error, 1)
	go func() { _, err := c.Fetch(ctx2, a, nil); err2 <- err }()
	time.Sleep(150 * time.Millisecond) // the second gives up waiting
	err3 := make(chan error, 1)
	go func() { _, err := c.Fetch(t.Context(), a, nil); err3 <- err }()
	select {
	case <-srv.Stalled:
		t.Error("a third download reached the server while the first was still stopping")
	case <-time.After(300 * time.Millisecond):
	}
	close(proceed)
	<-err1
	<-err2
	release()
	if err := <-err3; err != nil {
		t.Fatalf("third download: %v", err)
	}
}

// Errors never show a URI's query (pre-signed URLs carry credentials there).
func TestErrorsRedactInvalidURIs(t *testing.T) {
	c := newCache(t, t.TempDir(), 0)
	for _, a := range []artifact.Artifact{
		{URI: "https://b.example/m?X-Amz-Signature=topsecret", SHA256: digest(nil), Size: -1},
		{URI: "https://b.example:notaport/m?X-Amz-Signature=topsecret", SHA256: digest(nil)},
		{URI: "https://b.example/m?X-Amz-Signature=topsecret\n", SHA256: digest(nil)},
	} {
		if _, err := c.Fetch(t.Context(), a, nil); err == nil || strings.Contains(err.Error(), "topsecret") {
			t.Errorf("%q: err = %v", a.URI, err)
		}
	}
}

// Unstall then release, then the end of the test: each stall closes once.
func TestUnstallThenRelease(t *testing.T) {
	srv := artifacttest.New(t)
	srv.Add("/m", []byte("x"))
	release := srv.Stall("/m")
	srv.Unstall("/m")
	release()
}
