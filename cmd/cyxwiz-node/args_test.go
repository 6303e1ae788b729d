package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPositionalConfigRefused: `cyxwiz-node check-config bad.toml`
// (the path without -c, as in `nginx -t`-style habits) must not report "ok"
// for some other file. The positional argument is silently dropped and the
// default ./node.toml is checked (or served, for `serve`) instead.
func TestPositionalConfigRefused(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "node.toml"), []byte("[listen]\ngrpc = \"127.0.0.1:0\"\n"), 0o644)
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[listen]\nbogus = 1\n"), 0o644)
	t.Chdir(dir)
	var out, errOut bytes.Buffer
	code := run([]string{"check-config", bad}, &out, &errOut)
	if code == 0 {
		t.Errorf("check-config %s: exit 0, %q: the named file (with an unknown key) was not checked", bad, strings.TrimSpace(out.String()))
	}
}

// TestCheckConfigPrintsEffectiveValues: the usage text says
// check-config prints "the effective values"; it prints four of them.
func TestCheckConfigPrintsEffectiveValues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.toml")
	os.WriteFile(path, []byte("[limits]\nshutdown_timeout = \"30s\"\n[inference]\ncpu_latency = \"0us\"\n"), 0o644)
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-c", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"30s", "cpu_latency"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check-config output %q lacks %q", strings.TrimSpace(out.String()), want)
		}
	}
}
