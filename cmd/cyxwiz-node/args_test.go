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

// TestCommandHelp: `serve --help` and `check-config -h` print the command's
// usage on stdout and exit 0, as `cyxwiz-node --help` does; a wrong flag
// still exits 2 with the usage on stderr.
func TestCommandHelp(t *testing.T) {
	for _, args := range [][]string{{"serve", "--help"}, {"check-config", "-h"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "usage: cyxwiz-node "+args[0]) ||
			!strings.Contains(out.String(), "config file") || errOut.Len() != 0 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out.String(), errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"serve", "--bogus"}, &out, &errOut); code != 2 || out.Len() != 0 ||
		!strings.Contains(errOut.String(), "bogus") || !strings.Contains(errOut.String(), "usage: cyxwiz-node serve") {
		t.Errorf("--bogus: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
}
