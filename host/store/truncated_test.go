package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const truncHelperEnv = "CYXWIZ_STORE_TRUNC_HELPER"

// TestTruncatedFile: a store file cut short (a partial copy or restore of
// state_dir, a file system damaged by a power cut, a file truncated behind
// a running node) has valid meta pages naming pages past its end. bbolt
// reads them through its mapping, and the read faulted (SIGBUS): the node
// died at Open, or at its next List, with "fatal error: fault" and a
// runtime dump naming no file. Made a panic, a fault in a write left
// bbolt's write lock held (its rollback faulted too): the next write, and
// Close, waited forever. Each call now returns an error naming the file,
// wrapping ErrDamaged when a page could not be read. Each case runs in a
// child process: a fault or a deadlock ends the process it happens in.
func TestTruncatedFile(t *testing.T) {
	if env := os.Getenv(truncHelperEnv); env != "" {
		truncHelper(env)
		return
	}
	dir := t.TempDir()
	pristine := filepath.Join(dir, "pristine.db")
	s, err := Open(pristine)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 16 {
		rec := sample(fmt.Sprintf("dep-%d", i))
		rec.Spec = []byte(strings.Repeat("spec", 300))
		if err := s.Put(rec); err != nil {
			t.Fatal(err)
		}
	}
	pageSize := s.db.Info().PageSize
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(pristine)
	if err != nil {
		t.Fatal(err)
	}
	run := func(name, mode string, size int) {
		t.Helper()
		path := filepath.Join(dir, name+".db")
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestTruncatedFile$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%d:%s", truncHelperEnv, mode, size, path),
			"GORACE=atexit_sleep_ms=0") // the race detector waits 1 s at exit by default
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(string(out), "BAD") {
			first, _, _ := strings.Cut(string(out), "\n\n") // the fault, not the goroutine dump
			t.Errorf("%s: %v\n%s", name, err, first)
		}
	}
	for n := 2; n < len(orig)/pageSize; n++ {
		// Cut before Open, and under an open Store.
		run(fmt.Sprintf("cut%d", n), "cut", n*pageSize)
		run(fmt.Sprintf("live%d", n), "live", n*pageSize)
	}
	run("odd", "cut", 2*pageSize+100)
}

// truncHelper is TestTruncatedFile's child: env is mode:size:path. It
// prints a line with BAD for an error that names no file and is not a
// record's (ErrCorrupt, ErrNotFound); a fault or a deadlock kills it.
func truncHelper(env string) {
	mode, rest, _ := strings.Cut(env, ":")
	sizeStr, path, _ := strings.Cut(rest, ":")
	size, _ := strconv.Atoi(sizeStr)
	check := func(op string, err error) {
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) && !strings.Contains(err.Error(), path) {
			fmt.Printf("BAD %s: %v\n", op, err)
		}
		fmt.Printf("%s: %v\n", op, err)
	}
	if mode == "cut" {
		if err := os.Truncate(path, int64(size)); err != nil {
			fmt.Println("BAD", err)
			return
		}
	}
	s, err := Open(path)
	check("Open", err)
	if err != nil {
		return
	}
	if mode == "live" {
		if err := os.Truncate(path, int64(size)); err != nil {
			fmt.Println("BAD", err)
			return
		}
	}
	_, err = s.List()
	check("List", err)
	_, err = s.Get("dep-7")
	check("Get", err)
	check("Put", s.Put(sample("new")))
	check("Update", s.Update("dep-3", func(r *Record) error { r.State = "x"; return nil }))
	check("Delete", s.Delete("dep-5"))
	check("Close", s.Close())
}
