package artifact

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Errors returned by Fetch and the other Cache methods, wrapped with the URI
// or digest concerned. Branch on them with errors.Is.
var (
	// ErrInvalid reports an artifact description that cannot be fetched: an
	// unsupported scheme, a malformed digest, a missing digest for HTTP.
	ErrInvalid = errors.New("invalid artifact")
	// ErrNotFound reports a source that does not exist (HTTP 404 or 410, a
	// missing file), or Acquire/Release bookkeeping for an unknown digest.
	ErrNotFound = errors.New("artifact not found")
	// ErrChecksum reports content whose SHA-256 (or length) differs from the
	// one declared. The downloaded bytes are discarded.
	ErrChecksum = errors.New("artifact checksum mismatch")
	// ErrTooLarge reports content longer than Artifact.MaxSize or the declared
	// Artifact.Size. Reading stops at the limit and the bytes are discarded.
	ErrTooLarge = errors.New("artifact too large")
	// ErrFetch reports a transport or I/O failure: connection refused, an
	// unexpected HTTP status, a truncated body, a disk error.
	ErrFetch = errors.New("artifact fetch failed")
	// ErrClosed is returned by Fetch after Close, and by downloads that Close
	// interrupted.
	ErrClosed = errors.New("artifact cache closed")
)

const (
	objectsDir = "sha256"
	tmpDir     = "tmp"
)

// Option configures a Cache in New.
type Option func(*Cache)

// WithHTTPClient sets the client used for http:// and https:// artifacts.
// Default: a client with http.DefaultTransport's settings and no overall
// timeout (each Fetch is bounded by its context).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Cache) { c.client = hc }
}

// WithResumeBackoff sets the first wait before an interrupted download is
// resumed, or a first request that failed on the way (a refused
// connection, HTTP 5xx) is made again; each further try waits twice as
// long, up to 2 s. Default: 100 ms.
func WithResumeBackoff(d time.Duration) Option {
	return func(c *Cache) { c.backoff = d }
}

// WithStallTimeout sets how long a download may go without a byte (the
// response's headers, or more of its body) before the connection is
// dropped and the download resumed (or started again, from a server
// without ranges), as when the network cuts it. Default: 1 min. With
// WithHTTPClient, the client's own transport times the headers.
func WithStallTimeout(d time.Duration) Option {
	return func(c *Cache) { c.stall = d }
}

// Cache is a content-addressed artifact store on disk with a size budget.
// It is safe for concurrent use. See the package documentation for its
// layout and eviction rules.
type Cache struct {
	dir    string
	budget int64
	log    *slog.Logger
	client *http.Client
	// ownClient: client is the cache's own (not WithHTTPClient's), so Close
	// closes its idle connections.
	ownClient bool
	// backoff is the wait before the first resume of a download.
	backoff time.Duration
	// stall is how long a response may send nothing (WithStallTimeout).
	stall time.Duration

	// lock holds dir's lock file (see lockDir) until Close.
	lock *os.File

	// ctx is the parent of every download; Close cancels it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	entries map[string]*entry  // cached artifacts by digest
	refs    map[string]int     // pins by digest, cached or not
	flights map[string]*flight // downloads in progress by digest, joinable
	running map[string]*flight // downloads not yet stopped by digest (see startLocked)
	total   int64              // sum of entries' sizes
	seq     uint64             // LRU clock
}

// entry is one verified artifact in <dir>/sha256.
type entry struct {
	digest string
	size   int64
	used   uint64 // value of Cache.seq at last use; smaller is older
	// mtime is the file's modification time as the cache last saw or set
	// it: a file rewritten behind the cache's back, even to the same size,
	// has another.
	mtime time.Time
	// verified: this process hashed the file (it downloaded it, or checked
	// it at its first use). A file found on disk by New, or one whose size
	// or modification time changed behind the cache's back, is hashed again
	// before it is served.
	verified bool
}

// New opens (creating it if needed) the cache directory dir. budget is the
// number of bytes the cache tries to stay under; budget <= 0 means no limit.
// Partial downloads that an earlier run left in dir/tmp are kept to be
// resumed (see the package documentation); anything else there is deleted.
// A nil log discards log output.
func New(dir string, budget int64, log *slog.Logger, opts ...Option) (*Cache, error) {
	if dir == "" {
		return nil, fmt.Errorf("artifact cache: empty directory: %w", ErrInvalid)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		dir:     dir,
		budget:  budget,
		log:     log.With("dir", dir), // the caller names the component
		backoff: resumeBackoff,
		stall:   stallTimeout,
		entries: make(map[string]*entry),
		refs:    make(map[string]int),
		flights: make(map[string]*flight),
		running: make(map[string]*flight),
	}
	for _, o := range opts {
		o(c)
	}
	if c.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = c.stall // a request that is never answered is made again
		c.client = &http.Client{Transport: tr}
		c.ownClient = true
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	c.lock = lock
	if err := c.cleanTmp(); err != nil {
		lock.Close()
		return nil, err
	}
	if err := c.load(); err != nil {
		lock.Close()
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	bytes, files := c.Usage()
	c.log.Info("artifact cache opened", "bytes", bytes, "files", files, "budget", budget)
	return c, nil
}

// partialMaxAge is how long a partial download left by an earlier run is
// kept for a Fetch to resume: one untouched for longer is deleted by New.
const partialMaxAge = 24 * time.Hour

// cleanTmp keeps the partial downloads an earlier run left in dir/tmp
// (<digest>.part written to in the last partialMaxAge, resumed by the next
// Fetch of that digest) and deletes everything else there.
func (c *Cache) cleanTmp() error {
	tmp := filepath.Join(c.dir, tmpDir)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("artifact cache: %w", err)
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("artifact cache: read %s: %w", tmp, err)
	}
	kept, removed := 0, 0
	for _, de := range left {
		if d, ok := strings.CutSuffix(de.Name(), partSuffix); ok && de.Type().IsRegular() && validDigest(d) == nil && d == normDigest(d) {
			if fi, err := de.Info(); err == nil && time.Since(fi.ModTime()) < partialMaxAge {
				kept++
				continue
			}
		}
		if err := os.RemoveAll(filepath.Join(tmp, de.Name())); err != nil {
			return fmt.Errorf("artifact cache: clean %s: %w", tmp, err)
		}
		removed++
	}
	if kept+removed > 0 {
		c.log.Info("partial downloads from an earlier run", "kept_to_resume", kept, "removed", removed)
	}
	return nil
}

// load indexes dir/sha256, ordering the LRU by modification time.
func (c *Cache) load() error {
	objs := filepath.Join(c.dir, objectsDir)
	if err := os.MkdirAll(objs, 0o755); err != nil {
		return fmt.Errorf("artifact cache: %w", err)
	}
	des, err := os.ReadDir(objs)
	if err != nil {
		return fmt.Errorf("artifact cache: read %s: %w", objs, err)
	}
	type found struct {
		e     *entry
		mtime time.Time
	}
	var all []found
	for _, de := range des {
		name := de.Name()
		if !de.Type().IsRegular() || validDigest(name) != nil || name != normDigest(name) {
			c.log.Warn("ignoring unexpected file in cache", "name", name)
			continue
		}
		fi, err := de.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("artifact cache: stat %s: %w", name, err)
		}
		all = append(all, found{&entry{digest: name, size: fi.Size(), mtime: fi.ModTime()}, fi.ModTime()})
	}
	slices.SortFunc(all, func(a, b found) int { return a.mtime.Compare(b.mtime) })
	for _, f := range all {
		c.seq++
		f.e.used = c.seq
		c.entries[f.e.digest] = f.e
		c.total += f.e.size
	}
	return nil
}

// Close cancels downloads in progress, waits for them to finish cleaning up
// and makes later Fetch calls fail with ErrClosed. It closes the keep-alive
// connections of the cache's own HTTP client (not of one given with
// WithHTTPClient). Cached files stay on disk.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel(ErrClosed)
	c.wg.Wait()
	if c.ownClient {
		c.client.CloseIdleConnections()
	}
	c.mu.Lock()
	lock := c.lock
	c.lock = nil
	c.mu.Unlock()
	if lock != nil {
		return lock.Close()
	}
	return nil
}

// lockFile is the file in the cache's directory that one open Cache holds
// locked.
const lockFile = ".lock"

// lockDir creates dir and takes its lock, or says who holds it: two
// processes sharing a cache directory (two nodes with the same
// storage.cache_dir) would delete each other's partial downloads at start
// and evict each other's files in use.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	p := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("artifact cache %s is in use by another process (another node with the same storage.cache_dir?)", dir)
		}
		return nil, fmt.Errorf("artifact cache: lock %s: %w", p, err)
	}
	return f, nil
}

// Usage reports the bytes and number of artifacts currently cached.
// Unverified file:// artifacts used in place are not counted.
func (c *Cache) Usage() (bytes int64, files int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total, len(c.entries)
}

// Acquire pins digest so that it is not evicted while a deployment uses it.
// The digest need not be cached yet: pinning before Fetch closes the window in
// which a concurrent fetch could evict a just-fetched artifact. Every Acquire
// must be matched by one Release.
func (c *Cache) Acquire(digest string) error {
	if err := validDigest(digest); err != nil {
		return fmt.Errorf("acquire %q: %w", digest, err)
	}
	d := normDigest(digest)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refs[d]++
	c.touchLocked(d)
	return nil
}

// Release drops one pin taken by Acquire. When the last pin goes and the
// cache is over budget, unpinned artifacts are evicted at once, an artifact
// larger than the whole budget first; not after Close (the node stopping
// unpins what its deployments used, which the next run restores). Releasing
// a digest that is not pinned returns ErrNotFound and changes nothing.
func (c *Cache) Release(digest string) error {
	if err := validDigest(digest); err != nil {
		return fmt.Errorf("release %q: %w", digest, err)
	}
	d := normDigest(digest)
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.refs[d]
	if !ok {
		return fmt.Errorf("release %s: not acquired: %w", d, ErrNotFound)
	}
	if n > 1 {
		c.refs[d] = n - 1
		return nil
	}
	delete(c.refs, d)
	c.touchLocked(d)
	if !c.closed {
		c.evictLocked("")
	}
	return nil
}

// path returns where the verified artifact with digest d lives.
func (c *Cache) path(d string) string {
	return filepath.Join(c.dir, objectsDir, d)
}

// touchLocked marks d as just used, in memory and (best effort, so the order
// survives a restart) in the file's modification time, if verified. A file
// changed since the cache last saw it is no longer verified: setting its
// time must not hide the change.
func (c *Cache) touchLocked(d string) {
	e, ok := c.entries[d]
	if !ok {
		return
	}
	c.seq++
	e.used = c.seq
	p := c.path(d)
	if !c.unchanged(e) {
		e.verified = false
	}
	if !e.verified {
		// Being hashed, or to be: a time set now would look like a
		// change on disk during that (and get the copy deleted). It is
		// set once the copy is verified.
		return
	}
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Debug("touch artifact", "digest", d, "err", err)
	}
	if fi, err := os.Lstat(p); err == nil {
		e.mtime = fi.ModTime()
	}
}

// unchanged reports whether e's file is still the regular file of e's size
// and modification time that the cache last saw.
func (c *Cache) unchanged(e *entry) bool {
	fi, err := os.Lstat(c.path(e.digest))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == e.size && fi.ModTime().Equal(e.mtime)
}

// addLocked records a verified artifact just renamed into place and evicts
// others if that puts the cache over budget.
func (c *Cache) addLocked(d string, size int64) {
	if old, ok := c.entries[d]; ok {
		c.total -= old.size
	}
	c.seq++
	e := &entry{digest: d, size: size, used: c.seq, verified: true}
	if fi, err := os.Lstat(c.path(d)); err == nil {
		e.mtime = fi.ModTime()
	}
	c.entries[d] = e
	c.total += size
	if c.budget > 0 && size > c.budget {
		c.log.Warn("artifact is larger than the whole cache budget; it will be evicted first once released",
			"digest", d, "size", size, "budget", c.budget)
	}
	c.evictLocked(d)
}

// dropLocked forgets d without touching the disk.
func (c *Cache) dropLocked(d string) {
	if e, ok := c.entries[d]; ok {
		c.total -= e.size
		delete(c.entries, d)
	}
}

// evictLocked removes unpinned artifacts other than keep until the cache is
// within budget: those larger than the whole budget first, then the least
// recently used.
func (c *Cache) evictLocked(keep string) {
	if c.budget <= 0 || c.total <= c.budget {
		return
	}
	var cands []*entry
	for d, e := range c.entries {
		if d != keep && c.refs[d] == 0 {
			cands = append(cands, e)
		}
	}
	slices.SortFunc(cands, func(a, b *entry) int {
		if ao, bo := a.size > c.budget, b.size > c.budget; ao != bo {
			if ao {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.used, b.used)
	})
	for _, e := range cands {
		if c.total <= c.budget {
			break
		}
		if err := os.Remove(c.path(e.digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("evict artifact", "digest", e.digest, "err", err)
			continue
		}
		c.dropLocked(e.digest)
		c.log.Info("evicted artifact", "digest", e.digest, "size", e.size)
	}
	if c.total > c.budget {
		c.log.Warn("artifact cache over budget: remaining artifacts are in use",
			"bytes", c.total, "budget", c.budget)
	}
}

// validDigest checks that s is a hex-encoded SHA-256 (either case).
func validDigest(s string) error {
	if len(s) != 2*32 {
		return fmt.Errorf("sha256 %q: want 64 hex digits, got %d characters: %w", s, len(s), ErrInvalid)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return fmt.Errorf("sha256 %q: not hex: %w", s, ErrInvalid)
	}
	return nil
}

// normDigest returns the canonical (lowercase) spelling of a valid digest.
func normDigest(s string) string {
	b, _ := hex.DecodeString(s)
	return hex.EncodeToString(b)
}
