package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func sample(id string) Record {
	now := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("X", 3600))
	return Record{
		ID: id, Spec: []byte{0x0a, 0x03, 'a', 0x00, 0xff}, Desired: DesiredRunning,
		State: "loading", Message: "fetching", Created: now, Updated: now.Add(time.Second), Owner: "central-1",
	}
}

// equalRecord compares records, times by instant.
func equalRecord(a, b Record) bool {
	ta, tb := a, b
	ta.Created, ta.Updated, tb.Created, tb.Updated = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return reflect.DeepEqual(ta, tb) && a.Created.Equal(b.Created) && a.Updated.Equal(b.Updated)
}

func TestRoundTrip(t *testing.T) {
	s, _ := openTemp(t)
	for _, id := range []string{"dep-b", "dep-a", "dep-c"} {
		if err := s.Put(sample(id)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Get("dep-a")
	if err != nil {
		t.Fatal(err)
	}
	if !equalRecord(got, sample("dep-a")) {
		t.Errorf("Get = %+v, want %+v", got, sample("dep-a"))
	}

	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range list {
		ids = append(ids, r.ID)
	}
	if strings.Join(ids, ",") != "dep-a,dep-b,dep-c" {
		t.Errorf("List ids = %v, want sorted", ids)
	}

	if err := s.Delete("dep-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("dep-b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get deleted: err = %v, want ErrNotFound", err)
	}
}

func TestErrors(t *testing.T) {
	s, _ := openTemp(t)
	if err := s.Put(sample("x")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"get missing", func() error { _, err := s.Get("nope"); return err }, ErrNotFound},
		{"delete missing", func() error { return s.Delete("nope") }, ErrNotFound},
		{"update missing", func() error { return s.Update("nope", func(*Record) error { return nil }) }, ErrNotFound},
		{"put empty id", func() error { return s.Put(Record{}) }, ErrInvalid},
		{"update changes id", func() error { return s.Update("x", func(r *Record) error { r.ID = "y"; return nil }) }, ErrInvalid},
		{"update fn error", func() error {
			return s.Update("x", func(r *Record) error { r.State = "changed"; return boom })
		}, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// Failed updates wrote nothing.
	if got, err := s.Get("x"); err != nil || !equalRecord(got, sample("x")) {
		t.Errorf("after failed updates: %+v, %v", got, err)
	}
}

func TestCorruptValue(t *testing.T) {
	s, _ := openTemp(t)
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if err := b.Put([]byte("future"), []byte{99, '{', '}'}); err != nil {
			return err
		}
		return b.Put([]byte("garbled"), []byte{formatV1, '{'})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"future", "garbled"} {
		if _, err := s.Get(id); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Get %s: err = %v, want ErrCorrupt", id, err)
		}
	}
	if err := s.Put(Record{ID: "fine", Message: "ok"}); err != nil {
		t.Fatal(err)
	}
	recs, err := s.List()
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("List: err = %v, want ErrCorrupt", err)
	}
	if len(recs) != 1 || recs[0].ID != "fine" {
		t.Errorf("List with two unreadable records: %+v, want the readable one", recs)
	}
}

func TestUpdateConcurrent(t *testing.T) {
	const workers, each = 4, 20
	s, _ := openTemp(t)
	if err := s.Put(Record{ID: "counter", Message: "0"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Go(func() {
			for range each {
				errs <- s.Update("counter", func(r *Record) error {
					n, err := strconv.Atoi(r.Message)
					if err != nil {
						return err
					}
					r.Message = strconv.Itoa(n + 1)
					return nil
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Get("counter")
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(workers * each); got.Message != want {
		t.Errorf("counter = %s, want %s (lost updates)", got.Message, want)
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	s, path := openTemp(t)
	if err := s.Put(sample("dep-1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.Get("dep-1")
	if err != nil || !equalRecord(got, sample("dep-1")) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestOpenLockedFailsFast(t *testing.T) {
	_, path := openTemp(t)
	start := time.Now()
	s2, err := Open(path)
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want ErrLocked naming %s", err, path)
	}
	if d := time.Since(start); d > 3*openTimeout {
		t.Errorf("second Open took %s", d)
	}
}

func TestOpenNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junk.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a bolt file ", 1024)), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path); err == nil || !strings.Contains(err.Error(), path) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("err = %v, want an error naming %s", err, path)
	}
}

const helperEnv = "CYXWIZ_STORE_TEST_HELPER_DB"

// TestHelperProcess is not a test: TestCrashConsistency runs the test binary
// with helperEnv set, and it then Puts records until killed, printing
// "ack <id>" after each Put returns.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process for TestCrashConsistency")
	}
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		rec := sample(fmt.Sprintf("dep-%06d", i))
		rec.Spec = []byte(strings.Repeat("spec", 64+i%64))
		if err := s.Put(rec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		if _, err := fmt.Printf("ack %s\n", rec.ID); err != nil {
			os.Exit(4) // parent gone
		}
	}
}

func TestCrashConsistency(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	const killAfter = 30
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		id, ok := strings.CutPrefix(sc.Text(), "ack ")
		if !ok {
			continue
		}
		acked = append(acked, id)
		if len(acked) == killAfter {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL, mid-loop
				t.Fatal(err)
			}
		}
	}
	// Acks written before the kill are still read above, until EOF.
	err = cmd.Wait()
	if len(acked) < killAfter {
		t.Fatalf("helper acknowledged only %d records (wait: %v)", len(acked), err)
	}
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != -1 {
		t.Fatalf("helper did not die by signal: %v", err)
	}

	s, err := Open(path)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s.Close()
	err = s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // drain: Check's goroutine sends every problem
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatalf("consistency check: %v", err)
	}
	for _, id := range acked {
		rec, err := s.Get(id)
		if err != nil {
			t.Fatalf("acknowledged record lost: %v", err)
		}
		if want := sample(id); rec.Owner != want.Owner || rec.Desired != want.Desired {
			t.Fatalf("record %s = %+v", id, rec)
		}
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) < len(acked) || len(list) > len(acked)+1 {
		t.Errorf("%d records after crash, %d acknowledged: want the acknowledged ones and at most one more", len(list), len(acked))
	}
	t.Logf("%d records acknowledged before SIGKILL, %d present", len(acked), len(list))
}
