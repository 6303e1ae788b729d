package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDamagedFile: bbolt panics on a page that is not what it expects. A
// store file damaged on disk crashed the node (at Open, or at the first
// List, Put...) with a bbolt assertion naming no file; now each call returns
// an error wrapping ErrDamaged and naming the file, and the Store still
// closes.
func TestDamagedFile(t *testing.T) {
	dir := t.TempDir()
	pristine := filepath.Join(dir, "pristine.db")
	s, err := Open(pristine)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		rec := sample(fmt.Sprintf("dep-%d", i))
		rec.Spec = []byte(strings.Repeat("spec", 100)) // the bucket gets its own page
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

	damaged := 0
	// Pages 0 and 1 are bbolt's checksummed meta pages; damage the others,
	// one at a time, in the page header: at 0 its id and flags, at 8 its
	// flags only. (Not its element count or overflow: bbolt loops for hours
	// on a huge one, which no guard can help.)
	for pg := 2; pg < len(orig)/pageSize; pg++ {
		for _, at := range []int{0, 8} {
			path := filepath.Join(dir, fmt.Sprintf("page%d-%d.db", pg, at))
			b := append([]byte(nil), orig...)
			copy(b[pg*pageSize+at:pg*pageSize+10], []byte{0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff})
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			check := func(op string, err error) {
				t.Helper()
				if err == nil || errors.Is(err, ErrNotFound) {
					return
				}
				if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) {
					t.Errorf("page %d+%d: %s: %v, want ErrDamaged naming the file", pg, at, op, err)
				}
				damaged++
			}
			s, err := Open(path)
			check("Open", err)
			if err != nil {
				continue
			}
			_, err = s.List()
			check("List", err)
			_, err = s.Get("dep-3")
			check("Get", err)
			check("Put", s.Put(sample("new")))
			check("Update", s.Update("dep-5", func(r *Record) error { r.State = "x"; return nil }))
			check("Delete", s.Delete("dep-6"))
			if err := s.Close(); err != nil {
				t.Errorf("page %d+%d: Close: %v", pg, at, err)
			}
		}
	}
	if damaged == 0 {
		t.Error("no damage was noticed")
	}
}

// TestUpdatePanicIsTheCallers: a panic in Update's fn is not taken for a
// damaged file: it goes on to the caller, and the store stays usable.
func TestUpdatePanicIsTheCallers(t *testing.T) {
	s, _ := openTemp(t)
	if err := s.Put(sample("a")); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the caller's panic", r)
			}
		}()
		s.Update("a", func(*Record) error { panic("boom") })
	}()
	if err := s.Update("a", func(r *Record) error { r.State = "ok"; return nil }); err != nil {
		t.Fatal(err)
	}
}
