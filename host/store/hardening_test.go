package store

import (
	"errors"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A value whose id is not its key (a damaged record, or one copied under
// another key) is corrupt: List returned it under the id inside it, so a
// restart could restore two deployments with one id (or one with none),
// and Update of its key failed with "id changed" (ErrInvalid).
func TestRecordUnderAnotherKeyIsCorrupt(t *testing.T) {
	s, _ := openTemp(t)
	if err := s.Put(sample("b")); err != nil {
		t.Fatal(err)
	}
	b, err := encode(sample("b"))
	if err != nil {
		t.Fatal(err)
	}
	noID, err := encode(sample(""))
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucket).Put([]byte("a"), b); err != nil {
			return err
		}
		return tx.Bucket(bucket).Put([]byte("c"), noID)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "c"} {
		if _, err := s.Get(id); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Get %s: err = %v, want ErrCorrupt", id, err)
		}
		if err := s.Update(id, func(*Record) error { return nil }); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Update %s: err = %v, want ErrCorrupt", id, err)
		}
	}
	recs, err := s.List()
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("List: err = %v, want ErrCorrupt", err)
	}
	if len(recs) != 1 || recs[0].ID != "b" {
		t.Errorf("List: %+v, want only b", recs)
	}
	// Put repairs the key.
	if err := s.Put(sample("a")); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get("a"); err != nil || r.ID != "a" {
		t.Errorf("Get a after Put: %+v, %v", r, err)
	}
}
