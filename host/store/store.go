// Package store keeps the node's deployment records durably on disk, so that
// a restarted node knows what it was asked to run.
//
// Records live in one bbolt file. Every write is a bbolt transaction that is
// fsynced before it returns, so a record whose Put or Update returned is
// present after a crash or power loss; a write interrupted by a crash is
// either entirely there or entirely absent.
//
// Each record is stored as a version byte followed by its JSON encoding, so
// the format can evolve without guessing. The file is locked while open: a
// second Open of the same file, from this or another process, fails after a
// short wait with ErrLocked.
//
//	s, err := store.Open("/var/lib/cyxwiz/node.db")
//	if err != nil { ... }
//	defer s.Close()
//	err = s.Put(store.Record{ID: "dep-1", Spec: specBytes, Desired: store.DesiredRunning})
//	err = s.Update("dep-1", func(r *store.Record) error { r.State = "loaded"; return nil })
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Errors returned by Store methods, wrapped with the record ID or file path.
var (
	// ErrNotFound reports that no record has the given ID.
	ErrNotFound = errors.New("deployment record not found")
	// ErrInvalid reports a record that cannot be stored, such as one with an
	// empty ID, or an Update that changed the ID.
	ErrInvalid = errors.New("invalid deployment record")
	// ErrLocked reports that another Store (in this or another process) has
	// the file open.
	ErrLocked = errors.New("store file is locked by another process")
	// ErrCorrupt reports a stored record that cannot be decoded, for example
	// one written by a newer version of the node.
	ErrCorrupt = errors.New("corrupt deployment record")
	// ErrDamaged reports a store file whose pages bbolt cannot read (disk
	// damage, a file cut short, or a file changed behind bbolt's back).
	ErrDamaged = errors.New("store file is damaged")
)

// Desired states for Record.Desired.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// Record is the durable state of one deployment. The store interprets only ID;
// the other fields are the caller's, stored and returned as given (the store
// does not set timestamps).
type Record struct {
	// ID identifies the deployment; it is the key and must not be empty.
	ID string
	// Spec is the serialized deployment spec (protobuf bytes).
	Spec []byte
	// Desired is what the Central Server asked for: DesiredRunning or
	// DesiredStopped.
	Desired string
	// State is the last observed state of the deployment.
	State string
	// Message explains State, typically the last error.
	Message string
	// Created and Updated are the caller's timestamps.
	Created, Updated time.Time
	// Owner identifies who asked for the deployment.
	Owner string
}

// openTimeout bounds the wait for the file lock in Open.
const openTimeout = time.Second

var bucket = []byte("deployments")

// Store is a bbolt-backed table of Records keyed by ID. It is safe for
// concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	file *os.File // bbolt's; Close closes it alone when a write is wedged
	// wedged is set when a damaged page faulted a write transaction's
	// rollback too: bbolt never released its write lock, so any later
	// write, and bbolt's Close, would wait for it forever.
	wedged atomic.Bool
}

// Open opens the store file at path, creating it if needed. The directory
// must exist.
func Open(path string) (*Store, error) {
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)
	var f *os.File // bbolt's, closed here if bbolt panics on a damaged file
	opts := &bolt.Options{Timeout: openTimeout, OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
		var err error
		f, err = os.OpenFile(name, flag, perm)
		return f, err
	}}
	var db *bolt.DB
	err := guard(path, nil, func() (err error) {
		db, err = bolt.Open(path, 0o600, opts)
		return err
	})
	if errors.Is(err, ErrDamaged) {
		if f != nil {
			f.Close() // releases the lock (bbolt's mapping of the file stays)
		}
		return nil, fmt.Errorf("open store: %w", err)
	}
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (waited %s; is another cyxwiz-node running?)", path, ErrLocked, openTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if created {
		// The new file's directory entry survives a power cut with the
		// directory's own fsync (bbolt syncs the file, not its folder).
		if err := syncDir(filepath.Dir(path)); err != nil {
			db.Close()
			return nil, fmt.Errorf("open store %s: sync its directory: %w", path, err)
		}
	}
	s := &Store{db: db, path: path, file: f}
	err = s.update(nil, func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
	if err != nil {
		s.Close() // not db.Close: it waits forever for a wedged write
		return nil, fmt.Errorf("open store %s: create bucket: %w", path, err)
	}
	return s, nil
}

// view and update run fn in a bbolt transaction. bbolt panics on a page
// that is not what it expects (a damaged file): that becomes an error
// wrapping ErrDamaged, not a crash of the node; bbolt has already rolled
// the transaction back. A panic while *inFn is true is the caller's own
// code's: it goes on as it was.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	return guard(s.path, nil, func() error { return s.db.View(fn) })
}

func (s *Store) update(inFn *bool, fn func(*bolt.Tx) error) error {
	if s.wedged.Load() {
		return fmt.Errorf("%w: %s: an earlier write stopped on a damaged page", ErrDamaged, s.path)
	}
	var tx *bolt.Tx
	err := guard(s.path, inFn, func() error {
		return s.db.Update(func(t *bolt.Tx) error { tx = t; return fn(t) })
	})
	if errors.Is(err, ErrDamaged) && tx != nil && tx.DB() != nil {
		s.wedged.Store(true) // never closed: its rollback panicked as well
	}
	return err
}

// guard calls f, turning a panic into an error wrapping ErrDamaged and
// naming path, unless inFn is set and true. A read of bbolt's mapping past
// the end of a file cut short (meta pages naming pages it no longer has)
// faults: that is a panic here too, not a crash of the node.
func guard(path string, inFn *bool, f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if inFn != nil && *inFn {
			return // no recover: the caller's panic keeps its stack
		}
		if r := recover(); r != nil {
			if fault, ok := r.(interface{ Addr() uintptr }); ok {
				r = fmt.Sprintf("read of its mapping faulted at %#x (the file is shorter than its pages say, or the disk failed)", fault.Addr())
			}
			err = fmt.Errorf("%w: %s: %v", ErrDamaged, path, r)
		}
	}()
	return f()
}

// syncDir fsyncs the directory dir.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close releases the file. Using the Store afterwards returns errors.
func (s *Store) Close() error {
	if s.wedged.Load() {
		// bbolt's Close would wait for the write lock forever: release
		// the file and its lock (bbolt's mapping stays).
		if err := s.file.Close(); err != nil {
			return fmt.Errorf("close store %s: %w", s.path, err)
		}
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.path, err)
	}
	return nil
}

// Put creates or replaces the record with rec.ID. It is durable when Put
// returns nil.
func (s *Store) Put(rec Record) error {
	if rec.ID == "" {
		return fmt.Errorf("put: empty id: %w", ErrInvalid)
	}
	v, err := encode(rec)
	if err != nil {
		return fmt.Errorf("put %s: %w", rec.ID, err)
	}
	err = s.update(nil, func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put([]byte(rec.ID), v)
	})
	if err != nil {
		return fmt.Errorf("put %s: %w", rec.ID, err)
	}
	return nil
}

// Get returns the record with id, or an error wrapping ErrNotFound.
func (s *Store) Get(id string) (Record, error) {
	var rec Record
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		var err error
		rec, err = decode([]byte(id), v)
		return err
	})
	if err != nil {
		return Record{}, fmt.Errorf("get %s: %w", id, err)
	}
	return rec, nil
}

// List returns every record, sorted by ID (byte order).
//
// A record that cannot be decoded (written by a newer node, or damaged) does
// not hide the others: List returns every record it could decode, with an
// error wrapping ErrCorrupt that names the others.
func (s *Store) List() ([]Record, error) {
	var recs []Record
	var bad []error
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			rec, err := decode(k, v)
			if err != nil {
				bad = append(bad, fmt.Errorf("%s: %w", k, err))
				return nil
			}
			recs = append(recs, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	if len(bad) > 0 {
		return recs, fmt.Errorf("list: %w", errors.Join(bad...))
	}
	return recs, nil
}

// Delete removes the record with id; it returns an error wrapping
// ErrNotFound if there is none.
func (s *Store) Delete(id string) error {
	err := s.update(nil, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b.Get([]byte(id)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	return nil
}

// Update reads the record with id, lets fn modify it and writes it back, all
// in one transaction: concurrent Updates of the same record never lose each
// other's changes. If fn returns an error nothing is written and Update
// returns that error. fn must not change the ID (ErrInvalid) and, since the
// transaction holds the store's write lock, must be quick and must not call
// the Store.
func (s *Store) Update(id string, fn func(*Record) error) error {
	var inFn bool // while fn runs: its panics are the caller's
	err := s.update(&inFn, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		v := b.Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		rec, err := decode([]byte(id), v)
		if err != nil {
			return err
		}
		inFn = true
		err = fn(&rec)
		inFn = false
		if err != nil {
			return err
		}
		if rec.ID != id {
			return fmt.Errorf("id changed to %q: %w", rec.ID, ErrInvalid)
		}
		nv, err := encode(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), nv)
	})
	if err != nil {
		return fmt.Errorf("update %s: %w", id, err)
	}
	return nil
}

// formatV1 marks a value as version 1: JSON of recordV1.
const formatV1 byte = 1

// recordV1 is the stored form of Record. Its JSON names are the format: never
// rename them; add fields, or add a new version.
type recordV1 struct {
	ID      string    `json:"id"`
	Spec    []byte    `json:"spec,omitempty"`
	Desired string    `json:"desired,omitempty"`
	State   string    `json:"state,omitempty"`
	Message string    `json:"message,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Owner   string    `json:"owner,omitempty"`
}

func encode(r Record) ([]byte, error) {
	b, err := json.Marshal(recordV1(r))
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return append([]byte{formatV1}, b...), nil
}

// decode decodes the value v stored under key. A record must carry its key
// as its ID: one that does not (damaged, or copied under another key) is
// corrupt, not a second record with that ID.
func decode(key, v []byte) (Record, error) {
	if len(v) == 0 {
		return Record{}, fmt.Errorf("%w: empty value", ErrCorrupt)
	}
	switch v[0] {
	case formatV1:
		var r recordV1
		if err := json.Unmarshal(v[1:], &r); err != nil {
			return Record{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if r.ID != string(key) {
			return Record{}, fmt.Errorf("%w: stored under key %q with id %q", ErrCorrupt, key, r.ID)
		}
		return Record(r), nil
	default:
		return Record{}, fmt.Errorf("%w: unknown format version %d", ErrCorrupt, v[0])
	}
}
