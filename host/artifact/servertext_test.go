package artifact_test

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
)

// rawServer answers every HTTP request on a loopback listener with resp,
// as is; it stops when the test ends.
func rawServer(t *testing.T, resp string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if l, err := r.ReadString('\n'); err != nil || l == "\r\n" {
						break
					}
				}
				c.Write([]byte(resp))
			})
		}
	})
	return "http://" + ln.Addr().String() + "/model.onnx"
}

// TestFetchServerTextBounded: an artifact server chooses the reason phrase
// of its status line and its header lines, up to the 10 MB Go reads. They
// went whole into Fetch's error, which becomes the deployment's Failed
// message: stored, logged and sent with every status and list (a few such
// deployments made ListDeployments too big for a client to receive), with
// the server's control characters (terminal escapes) in it.
func TestFetchServerTextBounded(t *testing.T) {
	junk := strings.Repeat("A", 1<<20) + "\x1b[2J\x1b]0;pwned\x07"
	for _, tc := range []struct {
		name, resp string
		want       error
		in         string
	}{
		{"reason phrase", "HTTP/1.1 500 " + junk + "\r\nContent-Length: 0\r\n\r\n", artifact.ErrFetch, "500"},
		{"reason phrase of a 404", "HTTP/1.1 404 " + junk + "\r\nContent-Length: 0\r\n\r\n", artifact.ErrNotFound, "404"},
		{"malformed header line", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + junk + "\r\n\r\n", artifact.ErrFetch, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t, t.TempDir(), 0, artifact.WithResumeBackoff(time.Millisecond))
			_, err := c.Fetch(t.Context(), artifact.Artifact{URI: rawServer(t, tc.resp), SHA256: strings.Repeat("ab", 32)}, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %.300v, want %v", err, tc.want)
			}
			msg := err.Error()
			if len(msg) > 1024 || strings.ContainsAny(msg, "\x1b\x07") || !strings.Contains(msg, tc.in) {
				t.Errorf("error of %d bytes (%.200q...), want at most 1 KiB, without control characters, saying %q", len(msg), msg, tc.in)
			}
		})
	}
}
