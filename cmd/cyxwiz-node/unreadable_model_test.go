package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// check-config, run as the user the node runs as, warns about a [[models]]
// file that user cannot read: serve's load of it fails ("system error
// number 13"), and check-config said only "ok" (it looked only for the
// file being there).
func TestCheckConfigWarnsUnreadableModel(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.toml")
	for _, f := range []string{"secret.onnx", "open.onnx"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "secret.onnx"), 0); err != nil {
		t.Fatal(err)
	}
	toml := "[[models]]\nname = \"a\"\nformat = \"onnx\"\npath = \"secret.onnx\"\n[[models]]\nname = \"b\"\nformat = \"onnx\"\npath = \"open.onnx\"\n"
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if os.Getuid() != 0 {
		if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
			t.Fatalf("check-config: exit %d: %s", code, errOut.String())
		}
	} else {
		// Root reads any file: check as nobody, as a node run by systemd
		// with User= would be.
		bin := daemonBinary(t)
		for _, d := range []string{filepath.Dir(bin), dir, filepath.Dir(dir)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range []string{filepath.Dir(filepath.Dir(bin)), filepath.Dir(filepath.Dir(dir))} {
			for ; p != filepath.Dir(p); p = filepath.Dir(p) {
				if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o001 == 0 {
					t.Skipf("nobody cannot reach the test's files: %s is not searchable by others", p)
				}
			}
		}
		cmd := exec.Command(bin, "check-config", "-c", path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("check-config as nobody: %v: %s", err, errOut.String())
		}
	}
	var mentions []string
	for _, l := range strings.Split(errOut.String(), "\n") {
		if strings.Contains(l, ".onnx") {
			mentions = append(mentions, l)
		}
	}
	if len(mentions) != 1 || !strings.Contains(mentions[0], "warning: models[0] (a)") || !strings.Contains(mentions[0], "permission denied") {
		t.Errorf("warnings naming a model file: %q, want one for models[0], permission denied", mentions)
	}
}
