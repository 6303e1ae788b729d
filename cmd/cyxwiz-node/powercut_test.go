package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// A power cut during a download leaves the partial file with a tail whose
// pages never reached the disk (zeros, as ext4 shows blocks allocated but
// not written). The restarted node resumes after those bytes, the digest
// does not match, and the download runs once more from the start: the
// deployment serves. It ended Failed ("checksum") although the artifact at
// its URI was fine, and the Central Server had to assign it again.
func TestPowerCutPartialDownloadRecovers(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, cacheDir := nodeConfig(t)
	srv := artifacttest.New(t)
	n := startDaemon(t, bin, cfg)
	b := serveModel(srv, "b", linearModel(2))
	srv.Stall(b.path)
	n.assign(t, b)
	waitStalled(t, srv, "b")
	half := len(b.data) / 2
	part := waitPartial(t, filepath.Join(cacheDir, "artifacts", "tmp"), int64(half))
	srv.Unstall(b.path)
	n.kill(t)

	// The power cut: the last bytes written never reached the disk.
	f, err := os.OpenFile(part, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	lost := min(half, 64)
	if _, err := f.WriteAt(make([]byte, lost), int64(half-lost)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	n = startDaemon(t, bin, cfg)
	n.waitServing(t, b.id)
	n.check(t, b)
	n.kill(t)
}
