package artifact

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

// Artifact describes one file to fetch.
type Artifact struct {
	// URI is where the bytes come from: http://host/..., https://host/... or
	// file:///absolute/path.
	URI string
	// SHA256 is the expected hex digest of the content (either case).
	// Required for http and https; optional for file://, where an empty value
	// means "use the file in place, unverified".
	SHA256 string
	// Size is the declared length in bytes; 0 means unknown. Longer content
	// fails with ErrTooLarge, shorter content with ErrChecksum.
	Size int64
	// MaxSize caps the bytes read; 0 means no cap. Longer content fails with
	// ErrTooLarge as soon as the cap is passed.
	MaxSize int64
}

const (
	// progressBytes and progressEvery bound how often a download publishes
	// progress: after this many new bytes or this much time, whichever first.
	progressBytes = 64 << 10
	progressEvery = 100 * time.Millisecond
)

// Fetch returns the local path of the artifact a, downloading and verifying
// it unless a verified copy is already cached (a cache hit never touches the
// network; the first hit of a copy found on disk by New hashes it first).
// The returned path is read-only and must not be modified; pin it with
// Acquire so that eviction leaves it alone.
//
// progress, if not nil, is called from the calling goroutine, never after
// Fetch returns, with the bytes received so far and the total (from
// Content-Length, the file size or Artifact.Size; -1 when unknown). done never
// decreases, and a successful Fetch ends with progress(size, size); a cache
// hit makes just that call.
//
// Concurrent calls for the same digest share one download, driven by the
// URI and limits of the call that started it; when it fails, a caller with
// another URI or other limits tries its own. If ctx ends, Fetch returns an
// error wrapping ctx.Err(); the shared download goes on for the other callers,
// or is cancelled and cleaned up before Fetch returns if no caller is left.
//
// Errors wrap ErrInvalid, ErrNotFound, ErrChecksum, ErrTooLarge, ErrFetch,
// ErrClosed or a context error, with the (redacted) URI.
func (c *Cache) Fetch(ctx context.Context, a Artifact, progress func(done, total int64)) (string, error) {
	return c.fetch(ctx, a, monotonic(progress))
}

// monotonic wraps progress so that done never decreases over the downloads
// one Fetch follows: a shared one that failed, then its own, which starts
// again from 0. Until the new download passes what was reported, done stays
// where it was (a new total is still reported).
func monotonic(progress func(done, total int64)) func(done, total int64) {
	if progress == nil {
		return nil
	}
	lastDone, lastTotal := int64(-1), int64(-1)
	return func(done, total int64) {
		done = max(done, lastDone)
		if done == lastDone && total == lastTotal {
			return
		}
		lastDone, lastTotal = done, total
		progress(done, total)
	}
}

// fetch is Fetch with progress made monotonic.
func (c *Cache) fetch(ctx context.Context, a Artifact, progress func(done, total int64)) (string, error) {
	src, err := parseSource(a)
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("fetch %s: %w", src, err)
	}
	d := ""
	if a.SHA256 != "" {
		d = normDigest(a.SHA256)
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return "", fmt.Errorf("fetch %s: %w", src, ErrClosed)
	}
	if d == "" {
		c.mu.Unlock()
		return src.inPlace(a, progress)
	}
	if e, ok := c.entries[d]; ok {
		fi, err := os.Lstat(c.path(d))
		switch {
		case err != nil:
			c.log.Warn("cached artifact vanished from disk; fetching it again", "digest", d)
			c.dropLocked(d)
		case !fi.Mode().IsRegular() || fi.Size() != e.size || !fi.ModTime().Equal(e.mtime):
			// Changed behind the cache's back (rewritten in place keeps
			// the size, not the time): hashed again (by the flight below)
			// before it is served.
			if e.verified {
				c.log.Warn("cached artifact changed on disk; verifying it again", "digest", d,
					"size", fi.Size(), "want", e.size)
			}
			e.verified = false
		case e.verified:
			c.touchLocked(d)
			size := e.size
			c.mu.Unlock()
			if err := checkSize(size, a); err != nil {
				return "", fmt.Errorf("fetch %s: cached %s: %w", src, d, err)
			}
			if progress != nil {
				progress(size, size)
			}
			return c.path(d), nil
		}
		// Not verified by this process yet (found on disk by New): the
		// flight below hashes it first, and downloads it again if it is
		// not what its name says.
	}
	f, ok := c.flights[d]
	if !ok {
		f = c.startLocked(d, a, src)
	}
	f.waiters++
	c.mu.Unlock()

	path, err := c.wait(ctx, f, a, src, progress)
	if drv := driver(src, a); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) && f.failed() && f.driver != drv && !f.retried(drv) {
		// The shared download ran from another spec's URI, or with its
		// size limits, and failed: this one's own URI and limits may work
		// (a dead mirror, or another spec's wrong size, must not fail
		// everyone).
		c.log.Warn("shared download from another URI or with other size limits failed; fetching as this spec says",
			"uri", src.String(), "digest", d, "err", err)
		return c.fetch(ctx, a, progress)
	}
	return path, err
}

// flight is one download shared by every Fetch waiting for its digest.
type flight struct {
	digest string
	driver string // what it downloads from, with which limits (see driver)
	// tried lists the drivers whose own attempt followed this flight's
	// failure (each retries once; guarded by mu).
	tried   map[string]bool
	cancel  context.CancelCauseFunc
	waiters int           // guarded by Cache.mu
	done    chan struct{} // closed when path, size and err are set

	path string
	size int64
	err  error

	mu        sync.Mutex
	published bool
	n, total  int64
	changed   chan struct{} // closed and replaced at each publish
	// retrying is the error of the last request that openRetry is to make
	// again, or of the cut that a resume or a restart follows; nil once a
	// request is answered. A waiter whose time runs out says it.
	retrying error
	// restarts counts the downloads started again from the start (see
	// restart); only the download's goroutine uses it.
	restarts int
}

// setRetrying records err as the reason f is waiting to ask again (nil:
// it is not).
func (f *flight) setRetrying(err error) {
	f.mu.Lock()
	f.retrying = err
	f.mu.Unlock()
}

// lastRetry is the error f is waiting to retry, if any.
func (f *flight) lastRetry() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.retrying
}

// driver names what drives a download of a from src: the URI (credentials
// included) and the limits, which fail a download past them.
func driver(src source, a Artifact) string {
	return fmt.Sprintf("%d %d %s", a.Size, a.MaxSize, src.uri())
}

// failed reports whether f is over and failed.
func (f *flight) failed() bool {
	select {
	case <-f.done:
		return f.err != nil
	default:
		return false
	}
}

// retried reports whether drv already retried after f failed, and marks it.
func (f *flight) retried(drv string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tried[drv] {
		return true
	}
	if f.tried == nil {
		f.tried = map[string]bool{}
	}
	f.tried[drv] = true
	return false
}

// publish records progress and wakes the waiters.
func (f *flight) publish(n, total int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published, f.n, f.total = true, n, total
	close(f.changed)
	f.changed = make(chan struct{})
}

// progress returns the latest published progress and a channel closed at the
// next publish.
func (f *flight) progress() (ok bool, n, total int64, changed <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.published, f.n, f.total, f.changed
}

// startLocked starts the download of digest d in a goroutine owned by c.
// Its context is cancelled by Close or when its last waiter leaves.
//
// Downloads of one digest never overlap, since they share the partial file
// tmp/<d>.part: one whose last waiter left is out of c.flights (no new
// waiter joins it) but still in c.running until it has stopped and removed
// its file; the next one waits for it, and finds the artifact cached if it
// finished after all.
func (c *Cache) startLocked(d string, a Artifact, src source) *flight {
	ctx, cancel := context.WithCancelCause(c.ctx)
	f := &flight{digest: d, driver: driver(src, a), cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	c.flights[d] = f
	prev := c.running[d]
	c.running[d] = f
	c.wg.Go(func() {
		defer cancel(nil)
		size, cached, err := c.afterPrevious(ctx, prev, d)
		if !cached && err == nil {
			size, cached, err = c.verifyCached(ctx, d)
		}
		if !cached && err == nil {
			size, err = c.download(ctx, f, d, a, src)
		}
		c.mu.Lock()
		if c.flights[d] == f {
			delete(c.flights, d)
		}
		if c.running[d] == f {
			delete(c.running, d)
		}
		if err == nil && !cached {
			c.addLocked(d, size)
		}
		c.mu.Unlock()
		if err == nil && !cached {
			c.log.Info("fetched artifact", "uri", src.String(), "digest", d, "size", size)
		}
		f.path, f.size, f.err = c.path(d), size, err
		close(f.done)
	})
	return f
}

// afterPrevious waits for prev, the download of d before this one, to stop.
// It returns d's size and true if d is now cached and verified (and marks
// it used), false when it must be verified or downloaded.
func (c *Cache) afterPrevious(ctx context.Context, prev *flight, d string) (int64, bool, error) {
	if prev == nil {
		return -1, false, nil
	}
	select {
	case <-prev.done:
	case <-ctx.Done():
		// prev is stopping (nothing waits for it but this): let it finish,
		// or the next download of d would start while it still owns the
		// partial file. The wait is short.
		<-prev.done
		return 0, false, fmt.Errorf("fetch %s: %w", d, context.Cause(ctx))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[d]; ok && e.verified {
		c.touchLocked(d)
		return e.size, true, nil
	}
	return -1, false, nil
}

// verifyCached hashes the cached copy of d if this process has not verified
// it yet (New found it on disk, or its size changed). It returns d's size
// and true when the copy is good (and marks it used). A copy that is not
// what its name says (a flipped bit, a truncated file, an unreadable one)
// is removed and forgotten, and false returned: d is downloaded again. A
// copy evicted while it was being hashed is downloaded again too.
func (c *Cache) verifyCached(ctx context.Context, d string) (int64, bool, error) {
	c.mu.Lock()
	e, ok := c.entries[d]
	c.mu.Unlock()
	if !ok {
		return -1, false, nil
	}
	// The time before hashing: a change while the file is read shows at
	// the next use.
	var mtime time.Time
	if fi, err := os.Lstat(c.path(d)); err == nil {
		mtime = fi.ModTime()
	}
	if testHookBeforeVerify != nil {
		testHookBeforeVerify(d)
	}
	n, sum, herr := hashFile(ctx, c.path(d))
	if ctx.Err() != nil {
		return 0, false, fmt.Errorf("fetch %s: verify cached copy: %w", d, context.Cause(ctx))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.entries[d]; !ok || cur != e {
		if ok && cur.verified {
			c.touchLocked(d)
			return cur.size, true, nil
		}
		return -1, false, nil
	}
	if herr == nil && sum == d {
		c.total += n - e.size
		e.size, e.mtime, e.verified = n, mtime, true
		c.touchLocked(d)
		if e.verified {
			c.log.Info("verified cached artifact", "digest", d, "size", n)
			return n, true, nil
		}
		herr = errors.New("changed on disk while it was verified")
	}
	switch {
	case errors.Is(herr, fs.ErrNotExist):
		c.log.Warn("cached artifact vanished from disk; fetching it again", "digest", d)
	case herr == nil:
		herr = fmt.Errorf("%w: %d bytes with sha256 %s", ErrChecksum, n, sum)
		fallthrough
	default:
		c.log.Warn("cached artifact is corrupt; fetching it again", "digest", d, "err", herr)
	}
	if err := os.Remove(c.path(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("remove corrupt artifact", "digest", d, "err", err)
	}
	c.dropLocked(d)
	return -1, false, nil
}

// hashFile returns the length and hex SHA-256 of the regular file at path
// (a symlink is not followed), reading until ctx ends.
func hashFile(ctx context.Context, path string) (int64, string, error) {
	fh, err := openRegular(path, syscall.O_NOFOLLOW)
	if err != nil {
		return 0, "", err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, ctxReader{ctx, fh}, make([]byte, 1<<20))
	if err != nil {
		return n, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// openRegular opens path for reading if it is a regular file. A FIFO, a
// device or a directory is refused before it is opened (opening a FIFO
// without a writer blocks, beyond the reach of any context; opening a
// device can have effects), and again after (O_NONBLOCK keeps an open that
// raced with a swap from blocking), with an error wrapping ErrInvalid.
func openRegular(path string, flag int) (*os.File, error) {
	fi, err := os.Stat(path)
	if err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s): %w", path, fi.Mode().Type(), ErrInvalid)
	}
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|flag, 0)
	if err != nil {
		return nil, err
	}
	if fi, err = fh.Stat(); err != nil {
		fh.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		fh.Close()
		return nil, fmt.Errorf("%s: not a regular file (%s): %w", path, fi.Mode().Type(), ErrInvalid)
	}
	return fh, nil
}

// wait follows f until it finishes or ctx ends, relaying progress.
func (c *Cache) wait(ctx context.Context, f *flight, a Artifact, src source, progress func(done, total int64)) (string, error) {
	lastN, lastTotal := int64(-1), int64(-1)
	for {
		ok, n, total, changed := f.progress()
		if progress != nil && ok && (n != lastN || total != lastTotal) {
			progress(n, total)
			lastN, lastTotal = n, total
		}
		select {
		case <-f.done:
			if f.err != nil {
				return "", f.err
			}
			if err := checkSize(f.size, a); err != nil {
				return "", fmt.Errorf("fetch %s: %w", src, err)
			}
			if progress != nil && (lastN != f.size || lastTotal != f.size) {
				progress(f.size, f.size)
			}
			return f.path, nil
		case <-changed:
		case <-ctx.Done():
			last := f.lastRetry() // before leave: the download ends there
			c.leave(ctx, f)
			if last != nil {
				// What went wrong is the request being retried, not the end
				// of the time it had.
				return "", fmt.Errorf("fetch %s: %w (while retrying: %w)", src, ctx.Err(), last)
			}
			return "", fmt.Errorf("fetch %s: %w", src, ctx.Err())
		}
	}
}

// leave unregisters a waiter whose ctx ended. The last one to leave cancels
// the download and waits for its partial file to be removed.
func (c *Cache) leave(ctx context.Context, f *flight) {
	c.mu.Lock()
	f.waiters--
	last := f.waiters == 0
	if last && c.flights[f.digest] == f {
		delete(c.flights, f.digest)
	}
	c.mu.Unlock()
	if last {
		f.cancel(context.Cause(ctx))
		<-f.done
	}
}

// download streams src into dir/tmp through a SHA-256 hasher and renames it
// to dir/sha256/d once the digest and size are verified.
func (c *Cache) download(ctx context.Context, f *flight, d string, a Artifact, src source) (size int64, err error) {
	again := false // the result is a second download's, wrapped already
	defer func() {
		if err != nil && !again {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
				err = cause
			}
			err = fmt.Errorf("fetch %s: %w", src, err)
		}
	}()
	// The partial file is named by digest, so that one left by a crash (or
	// a kill) is found again: what it holds is hashed, and only the rest is
	// asked for.
	tmpPath := filepath.Join(c.dir, tmpDir, d+partSuffix)
	tmp, err := openPartial(tmpPath)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrFetch, err)
	}
	defer func() {
		tmp.Close() // a no-op error once finish has closed it
		// Kept for the next run when the cache is closing (the node is
		// stopping): that run resumes it.
		if err != nil && !errors.Is(context.Cause(ctx), ErrClosed) {
			if testHookBeforeRemovePartial != nil {
				testHookBeforeRemovePartial()
			}
			if rerr := os.Remove(tmpPath); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				c.log.Warn("remove partial download", "file", tmpPath, "err", rerr)
			}
		}
	}()
	h := sha256.New()
	have, err := io.Copy(h, ctxReader{ctx, tmp})
	if err != nil {
		return 0, fmt.Errorf("%w: read partial download: %w", ErrFetch, err)
	}
	if have > 0 && hex.EncodeToString(h.Sum(nil)) == d {
		// Complete already (a crash came before the rename).
		return c.finish(tmp, tmpPath, d, have, a)
	}

	body, total, from, ri, err := c.openRetry(ctx, f, src, have)
	if err != nil {
		return 0, err
	}
	defer func() { body.Close() }()
	if from != have { // starting over
		if err := tmp.Truncate(0); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrFetch, err)
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrFetch, err)
		}
		h.Reset()
	}
	resumed := have > 0 && from == have
	if resumed {
		c.log.Info("resuming a download left by an earlier run", "uri", src.String(), "bytes", have, "total", total)
	}
	if total < 0 && a.Size > 0 {
		total = a.Size
	}
	limit := limitOf(a)
	if limit > 0 && total > limit {
		return 0, fmt.Errorf("%w: length %d exceeds limit %d", ErrTooLarge, total, limit)
	}

	pw := &progressWriter{f: f, total: total, n: from}
	pw.flush()
	w := &writeErr{w: io.MultiWriter(tmp, h, pw)}
	// An HTTP server's length (Content-Length, or a 206's Content-Range) is
	// a promise: a body that goes on past it (a 206 without Content-Length,
	// which Go does not cut) is not written to disk without end.
	announced := src.file == "" && total >= 0 && (limit <= 0 || total < limit)
	n := from
	resumes := 0
	for {
		var r io.Reader = body
		switch {
		case announced:
			r = io.LimitReader(body, total+1-n)
		case limit > 0:
			r = io.LimitReader(body, limit+1-n)
		}
		m, err := io.Copy(w, r)
		n += m
		if err == nil {
			break
		}
		// Only a broken body is worth another request: not a failed
		// write (a full disk), not a cancelled fetch. An error that is not
		// the writer's came from reading the body.
		if w.err != nil || ctx.Err() != nil {
			return 0, fmt.Errorf("%w: after %d bytes: %w", ErrFetch, n, err)
		}
		if !ri.resumable {
			// Cut off by a server that does not resume: from the start.
			return c.restart(ctx, f, d, a, src, body, tmp, fmt.Errorf("%w: after %d bytes: %w", ErrFetch, n, err), &again)
		}
		if n >= total {
			break // every byte came before the cut: the digest decides
		}
		next, err := c.reopen(ctx, f, src, ri, n, total, &resumes, err)
		if errors.Is(err, errWholeFile) {
			return c.restart(ctx, f, d, a, src, body, tmp, fmt.Errorf("%w: resume at byte %d of %d: %w", ErrFetch, n, total, err), &again)
		}
		if err != nil {
			return 0, err
		}
		body.Close()
		body = next
	}
	if limit > 0 && n > limit {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	if announced && n > total {
		return 0, fmt.Errorf("%w: the server sent more than the %d bytes it announced", ErrFetch, total)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d {
		if resumed {
			// The partial file an earlier run left may be what is wrong
			// (a power cut leaves its last pages unwritten: zeros), not
			// the artifact: once more from the start, then the digest
			// decides.
			c.log.Warn("a resumed download does not match its digest; downloading it again from the start",
				"uri", src.String(), "digest", d, "resumed_at", have)
			body.Close()
			if err := tmp.Truncate(0); err != nil {
				return 0, fmt.Errorf("%w: %w", ErrFetch, err)
			}
			again = true
			return c.download(ctx, f, d, a, src)
		}
		return 0, fmt.Errorf("%w: got sha256 %s, want %s", ErrChecksum, got, d)
	}
	pw.flush()
	return c.finish(tmp, tmpPath, d, n, a)
}

// restart downloads d again from the start after cut, the error of a
// download that cannot be resumed (a server without Accept-Ranges, or a
// resume answered with the whole file), after the resume backoff, up to
// maxResumes times per download: one cut failed the deployment. It closes
// body and empties tmp; again is set when the error returned is the new
// download's, wrapped already.
func (c *Cache) restart(ctx context.Context, f *flight, d string, a Artifact, src source, body io.Closer, tmp *os.File, cut error, again *bool) (int64, error) {
	if f.restarts == maxResumes {
		return 0, fmt.Errorf("%w (downloaded from the start %d times: the server cannot resume)", cut, maxResumes)
	}
	wait := c.backoffWait(f.restarts)
	f.restarts++
	c.log.Warn("download cut off and cannot be resumed; downloading it again from the start",
		"uri", src.String(), "attempt", f.restarts, "in", wait, "err", cut)
	body.Close()
	if err := tmp.Truncate(0); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrFetch, err)
	}
	f.setRetrying(cut) // cleared by openRetry once the new request is answered
	if !sleep(ctx, wait) {
		return 0, fmt.Errorf("%w (while waiting to download again after: %w)", context.Cause(ctx), cut)
	}
	*again = true
	return c.download(ctx, f, d, a, src)
}

// finish checks the size of a verified download of n bytes, makes it
// durable and read-only, and moves it into sha256/.
func (c *Cache) finish(tmp *os.File, tmpPath, d string, n int64, a Artifact) (int64, error) {
	if a.Size > 0 && n != a.Size {
		return 0, fmt.Errorf("%w: got %d bytes, declared size %d", ErrChecksum, n, a.Size)
	}
	if limit := limitOf(a); limit > 0 && n > limit {
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, limit)
	}
	// Sync before Chmod: a crash in between leaves a writable partial file
	// that the next run can open again.
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrFetch, err)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrFetch, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrFetch, err)
	}
	if fi, err := os.Lstat(c.path(d)); err == nil && fi.IsDir() {
		// Not an artifact (New ignores it), and no file can be renamed
		// over it: without this, every fetch of d downloads it in vain.
		c.log.Warn("removing a directory where an artifact belongs", "digest", d)
		if err := os.RemoveAll(c.path(d)); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrFetch, err)
		}
	}
	if err := os.Rename(tmpPath, c.path(d)); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrFetch, err)
	}
	syncDir(filepath.Join(c.dir, objectsDir))
	return n, nil
}

// openPartial opens (creating it) the partial download at path, which must
// be a regular file: anything else there (a directory, a symlink, a file it
// cannot open for writing) is removed and the file created anew.
func openPartial(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err == nil {
		if fi, serr := f.Stat(); serr == nil && fi.Mode().IsRegular() {
			return f, nil
		}
		f.Close()
	}
	if err := os.RemoveAll(path); err != nil {
		return nil, fmt.Errorf("replace %s: %w", path, err)
	}
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
}

// open starts reading src and returns its length (-1 when unknown), the
// byte the body starts at, and for HTTP what a resumed request needs (see
// resume). With offset > 0 it asks an HTTP server for the bytes from offset
// on; the body then starts at offset (206) or at 0 (the server sent the
// whole file). A local file is always read whole.
func (c *Cache) open(ctx context.Context, src source, offset int64) (body io.ReadCloser, total, from int64, ri resumeInfo, err error) {
	if src.file != "" {
		fh, err := openRegular(src.file, 0)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, 0, 0, ri, fmt.Errorf("%w: %w", ErrNotFound, err)
		case errors.Is(err, ErrInvalid):
			return nil, 0, 0, ri, err
		case err != nil:
			return nil, 0, 0, ri, fmt.Errorf("%w: %w", ErrFetch, err)
		}
		fi, err := fh.Stat()
		if err != nil {
			fh.Close()
			return nil, 0, 0, ri, fmt.Errorf("%w: %w", ErrFetch, err)
		}
		return ctxReader{ctx, fh}, fi.Size(), 0, ri, nil
	}

	resp, err := c.get(ctx, src, offset, offset > 0, "")
	if err != nil {
		return nil, 0, 0, ri, err
	}
	switch {
	case resp.StatusCode == http.StatusOK && offset > 0 && encoded(resp):
		// The whole file, answering a range request: Go did not decode it
		// (it does only for plain requests). Ask again plainly.
		resp.Body.Close()
		return c.open(ctx, src, 0)
	case resp.StatusCode == http.StatusOK:
		return resp.Body, resp.ContentLength, 0, resumeInfoOf(resp), nil
	case resp.StatusCode == http.StatusPartialContent && offset > 0 && encoded(resp):
		// Ranges of encoded bytes (Go decodes a gzip answer to a plain
		// request, not to a range request): they cannot follow the decoded
		// bytes on disk. Start over.
		resp.Body.Close()
		return c.open(ctx, src, 0)
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		size, ok := restFrom(resp, offset)
		if !ok {
			// Not the range asked for: what is on disk cannot be
			// continued with it. Start over, as when the range is ignored.
			c.log.Warn("range request answered with another range; downloading the whole file",
				"uri", src.String(), "content_range", serverText(resp.Header.Get("Content-Range")), "offset", offset)
			resp.Body.Close()
			return c.open(ctx, src, 0)
		}
		ri = resumeInfoOf(resp)
		ri.resumable = true
		return resp.Body, size, offset, ri, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		// What is on disk is as long as the file or longer: start over.
		resp.Body.Close()
		return c.open(ctx, src, 0)
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return nil, 0, 0, ri, fmt.Errorf("%w: HTTP %s", ErrNotFound, serverText(resp.Status))
	default:
		resp.Body.Close()
		return nil, 0, 0, ri, fmt.Errorf("%w: HTTP %w", ErrFetch, statusError{resp.StatusCode, serverText(resp.Status)})
	}
}

// openRetry is open, asking again after the resume backoff (up to
// maxResumes times) when the request fails on the way: a connection
// refused, reset, timed out or closed before the answer, a name that does
// not resolve yet, HTTP 408, 429 or 5xx. A node restored after a power cut
// asks before its network is up, and a server restarts: one such failure
// failed the deployment (and lost what a partial download held).
func (c *Cache) openRetry(ctx context.Context, f *flight, src source, offset int64) (body io.ReadCloser, total, from int64, ri resumeInfo, err error) {
	defer f.setRetrying(nil)
	for attempt := 0; ; attempt++ {
		body, total, from, ri, err = c.open(ctx, src, offset)
		if err == nil || src.file != "" || attempt == maxResumes || ctx.Err() != nil || !transient(err) {
			return body, total, from, ri, err
		}
		f.setRetrying(err)
		wait := c.backoffWait(attempt)
		c.log.Warn("download request failed; asking again", "uri", src.String(), "attempt", attempt+1, "in", wait, "err", err)
		if !sleep(ctx, wait) {
			return nil, 0, 0, ri, fmt.Errorf("%w (while retrying: %w)", context.Cause(ctx), err)
		}
	}
}

// backoffWait is the wait before retry attempt (from 0) of a request,
// a resume or a restart: the backoff, doubled at each attempt, up to 2 s.
func (c *Cache) backoffWait(attempt int) time.Duration {
	return min(c.backoff<<attempt, max(2*time.Second, c.backoff))
}

// sleep waits d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// statusError is an HTTP answer that is not the file.
type statusError struct {
	code int
	text string // the status line, as serverText makes it
}

func (e statusError) Error() string { return e.text }

// transient reports whether a request that failed with err may succeed if
// asked again: the network or the server was not ready. A refused answer
// (4xx but 408 and 429), a bad certificate or redirect, and a malformed
// response are not.
func transient(err error) bool {
	if se := (statusError{}); errors.As(err, &se) {
		return se.code == http.StatusRequestTimeout || se.code == http.StatusTooManyRequests || se.code >= 500
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true // no network yet looks like a name that does not resolve
	}
	var op *net.OpError
	if errors.As(err, &op) {
		var cert *tls.CertificateVerificationError
		return !errors.As(err, &cert)
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED)
}

// testHookBeforeVerify, when set by a test, runs before the cached copy of
// a digest is hashed to verify it.
var testHookBeforeVerify func(d string)

// testHookBeforeRemovePartial, when set by a test, runs before a failed
// download removes its partial file.
var testHookBeforeRemovePartial func()

// partSuffix ends the name of a partial download in dir/tmp:
// <digest>.part.
const partSuffix = ".part"

// maxResumes bounds how many times one download is resumed after its body
// broke off; resumeBackoff is the first wait before resuming (doubled each
// time, up to 2 s).
const (
	maxResumes    = 8
	resumeBackoff = 100 * time.Millisecond
	// stallTimeout is how long a response may send nothing before its
	// connection is dropped (WithStallTimeout).
	stallTimeout = time.Minute
)

// resumeInfo is what the first HTTP response said about resuming: whether
// the server takes byte ranges, and the validator (a strong ETag, or
// Last-Modified) that makes a range request fail over to the whole,
// changed file instead of mixing two versions.
type resumeInfo struct {
	resumable bool
	validator string
}

func resumeInfoOf(resp *http.Response) resumeInfo {
	ri := resumeInfo{resumable: resp.Header.Get("Accept-Ranges") == "bytes" && resp.ContentLength > 0}
	if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
		ri.validator = et
	} else {
		ri.validator = resp.Header.Get("Last-Modified")
	}
	return ri
}

// errRangeRefused: the server did not answer a range request with the
// range asked for; resuming cannot work.
var errRangeRefused = errors.New("range request refused")

// errWholeFile is a resume answered with the whole file (HTTP 200): the
// validator did not match (the file changed, or a load balancer's
// backends give the same file other ETags), or a proxy dropped the Range.
// The download starts again from the start; the digest decides.
var errWholeFile = errors.New("the server sent the whole file (HTTP 200)")

// reopen resumes a download cut off at offset by cut, retrying a resume
// request that fails on the way (a refused connection, a 503) until the
// download has used maxResumes. A server that refuses the range, or the
// request (403, 404), ends it.
// Until a resume works, f says what it is retrying after (see wait).
func (c *Cache) reopen(ctx context.Context, f *flight, src source, ri resumeInfo, offset, total int64, resumes *int, cut error) (io.ReadCloser, error) {
	for {
		f.setRetrying(cut)
		if *resumes == maxResumes {
			return nil, fmt.Errorf("%w: gave up after %d resumes at byte %d of %d: %v", ErrFetch, maxResumes, offset, total, cut)
		}
		c.log.Warn("download interrupted; resuming", "uri", src.String(), "bytes", offset, "total", total,
			"resume", *resumes+1, "err", cut)
		body, err := c.resume(ctx, src, ri, offset, total, *resumes)
		*resumes++
		switch {
		case err == nil:
			f.setRetrying(nil)
			return body, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, errRangeRefused) || !transient(err):
			// Refused for good (416, 403, 404, a bad certificate):
			// asking again cannot help.
			return nil, fmt.Errorf("%w: resume at byte %d: %w", ErrFetch, offset, err)
		}
		cut = err
	}
}

// resume asks src for bytes offset to total-1, after a backoff that doubles
// with each attempt. It accepts only a 206 with exactly that range (or,
// from byte 0, the whole file of that length): a server that sends the
// whole file again (it changed, or ignores ranges) gives errRangeRefused.
// The digest is checked over the whole file anyway.
func (c *Cache) resume(ctx context.Context, src source, ri resumeInfo, offset, total int64, attempt int) (io.ReadCloser, error) {
	if !sleep(ctx, c.backoffWait(attempt)) {
		return nil, ctx.Err()
	}
	resp, err := c.get(ctx, src, offset, true, ri.validator)
	if err != nil {
		return nil, err
	}
	if offset == 0 && resp.StatusCode == http.StatusOK && resp.ContentLength == total && !encoded(resp) {
		// Cut before its first byte: nothing on disk to mix with, and the
		// whole file is what is needed (a server may answer bytes=0- so).
		return resp.Body, nil
	}
	if resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return nil, fmt.Errorf("%w: %w: it changed, or ranges are not served here", errRangeRefused, errWholeFile)
		case http.StatusRequestedRangeNotSatisfiable:
			// The file is not as long as the first response said (it
			// shrank, or that length was false): asking again cannot help.
			return nil, fmt.Errorf("%w: HTTP %s", errRangeRefused, serverText(resp.Status))
		case http.StatusNotFound, http.StatusGone:
			return nil, fmt.Errorf("%w: HTTP %s", ErrNotFound, serverText(resp.Status))
		}
		return nil, fmt.Errorf("%w: HTTP %w", ErrFetch, statusError{resp.StatusCode, serverText(resp.Status)})
	}
	if size, ok := restFrom(resp, offset); !ok || size != total {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: Content-Range %q, want bytes %d-%d/%d", errRangeRefused, serverText(resp.Header.Get("Content-Range")), offset, total-1, total)
	}
	return resp.Body, nil
}

// get sends a GET for src: for the bytes from offset on when ranged (a
// resume asks for a range even from byte 0: a body cut before its first
// byte), with If-Range: validator when that is set.
func (c *Cache) get(ctx context.Context, src source, offset int64, ranged bool, validator string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if ranged {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		if validator != "" {
			req.Header.Set("If-Range", validator)
		}
	}
	return c.do(req)
}

// restFrom reads a 206's Content-Range and says whether it holds the rest
// of the file from offset on, and the file's size.
func restFrom(resp *http.Response, offset int64) (size int64, ok bool) {
	var first, last int64
	_, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &size)
	return size, err == nil && first == offset && last == size-1
}

// do sends req without the URL in its error: *url.Error repeats the full
// URL, query string included.
func (c *Cache) do(req *http.Request) (*http.Response, error) {
	resp, err := c.client.Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%w: %w", ErrFetch, serverError{err})
	}
	if c.stall > 0 {
		resp.Body = newStallReader(resp.Body, c.stall)
	}
	return resp, nil
}

// maxServerText bounds the text an HTTP server chose (its reason phrase, a
// header, a line a transport error quotes) in an error: Go reads up to 10
// MB of it, and the error becomes the deployment's message, stored, logged
// and sent with every status.
const maxServerText = 256

// serverText is s, text an HTTP server chose, fit for an error message:
// valid UTF-8 without control characters (terminal escapes), cut to
// maxServerText bytes.
func serverText(s string) string {
	s = strings.Map(func(r rune) rune { // invalid UTF-8 becomes U+FFFD
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	if len(s) <= maxServerText {
		return s
	}
	cut := maxServerText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d more bytes)", s[:cut], len(s)-cut)
}

// serverError is a transport error, whose text may quote what the server
// sent (a malformed header line), shown as serverText.
type serverError struct{ err error }

func (e serverError) Error() string { return serverText(e.err.Error()) }
func (e serverError) Unwrap() error { return e.err }

// writeErr remembers the error its writer returned, so that a failed copy
// can tell a failed write from a broken body.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// ParseURI parses an artifact URI. Its error wraps ErrInvalid and shows
// the URI redacted: url.Error quotes it whole, query (the credentials of a
// pre-signed URL) included.
func ParseURI(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("artifact uri %s: %w: %v", redactRaw(raw), ErrInvalid, err)
	}
	return u, nil
}

// redactRaw is a URI that does not parse, cut before its query and with
// any user information replaced: what redact shows of one that does.
func redactRaw(raw string) string {
	s, _, _ := strings.Cut(raw, "?")
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.LastIndex(s[i+3:], "@"); j >= 0 {
			s = s[:i+3] + "xxxxx@" + s[i+3+j+1:]
		}
	}
	return strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s), "")
}

// source is a parsed, validated Artifact.URI.
type source struct {
	u       *url.URL
	file    string // absolute path for file:// URIs
	display string // URI with password and query redacted, for errors and logs
}

// uri is the full URI (credentials included: never shown).
func (s source) uri() string {
	if s.u == nil {
		return s.file
	}
	return s.u.String()
}

// String returns the redacted URI.
func (s source) String() string { return s.display }

// parseSource validates a and parses its URI.
func parseSource(a Artifact) (source, error) {
	u, err := ParseURI(a.URI)
	if err != nil {
		return source{}, err
	}
	src := source{u: u, display: redact(u)}
	if a.Size < 0 || a.MaxSize < 0 {
		return source{}, fmt.Errorf("artifact %s: negative size: %w", src, ErrInvalid)
	}
	if a.SHA256 != "" {
		if err := validDigest(a.SHA256); err != nil {
			return source{}, fmt.Errorf("artifact %s: %w", src, err)
		}
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return source{}, fmt.Errorf("artifact %s: no host: %w", src, ErrInvalid)
		}
		if a.SHA256 == "" {
			return source{}, fmt.Errorf("artifact %s: %s artifacts need a sha256: %w", src, u.Scheme, ErrInvalid)
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return source{}, fmt.Errorf("artifact %s: file URI must be file:///absolute/path: %w", src, ErrInvalid)
		}
		if !filepath.IsAbs(u.Path) {
			return source{}, fmt.Errorf("artifact %s: file path must be absolute: %w", src, ErrInvalid)
		}
		if strings.ContainsAny(a.URI, "?#") {
			// A file has no query or fragment: file:///m/v1#2.onnx would
			// open /m/v1, another file, without a word.
			return source{}, fmt.Errorf("artifact %s: file URI with a query or fragment (escape '?' as %%3F and '#' as %%23): %w", src, ErrInvalid)
		}
		src.file = filepath.Clean(u.Path)
	default:
		return source{}, fmt.Errorf("artifact %s: unsupported scheme %q: %w", src, u.Scheme, ErrInvalid)
	}
	return src, nil
}

// redact hides a URI's password and query string (pre-signed URLs carry
// credentials there).
func redact(u *url.URL) string {
	r := *u
	if r.RawQuery != "" {
		r.RawQuery = "REDACTED"
	}
	r.Fragment, r.RawFragment = "", ""
	return r.Redacted()
}

// inPlace serves an unverified file:// artifact from where it is.
func (s source) inPlace(a Artifact, progress func(done, total int64)) (string, error) {
	fi, err := os.Stat(s.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("fetch %s: %w: %w", s, ErrNotFound, err)
	case err != nil:
		return "", fmt.Errorf("fetch %s: %w: %w", s, ErrFetch, err)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("fetch %s: not a regular file: %w", s, ErrInvalid)
	}
	if err := checkSize(fi.Size(), a); err != nil {
		return "", fmt.Errorf("fetch %s: %w", s, err)
	}
	if progress != nil {
		progress(fi.Size(), fi.Size())
	}
	return s.file, nil
}

// limitOf returns the most bytes a may have, 0 for no limit.
func limitOf(a Artifact) int64 {
	switch {
	case a.MaxSize > 0 && a.Size > 0:
		return min(a.MaxSize, a.Size)
	case a.MaxSize > 0:
		return a.MaxSize
	default:
		return a.Size
	}
}

// checkSize checks a known length against a's limits.
func checkSize(size int64, a Artifact) error {
	if limit := limitOf(a); limit > 0 && size > limit {
		return fmt.Errorf("%w: %d bytes exceeds limit %d", ErrTooLarge, size, limit)
	}
	if a.Size > 0 && size < a.Size {
		return fmt.Errorf("%w: %d bytes, declared size %d", ErrChecksum, size, a.Size)
	}
	return nil
}

// progressWriter counts bytes written and publishes progress to a flight at
// most every progressBytes or progressEvery.
type progressWriter struct {
	f        *flight
	total    int64
	n, sent  int64
	lastSent time.Time
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if w.n-w.sent >= progressBytes || time.Since(w.lastSent) >= progressEvery {
		w.flush()
	}
	return len(p), nil
}

// flush publishes the current count.
func (w *progressWriter) flush() {
	w.sent, w.lastSent = w.n, time.Now()
	w.f.publish(w.n, w.total)
}

// ctxReader makes reads of a local file stop once ctx ends.
type ctxReader struct {
	ctx context.Context
	io.ReadCloser
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.ReadCloser.Read(p)
}

// syncDir makes a rename in dir durable, best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// encoded reports whether resp's body is gzip that Go left as is: the one
// coding Go decodes, and only for plain requests, so that bytes on disk from
// a plain request were decoded while a range answer is not. Other codings
// are never decoded and resume as they are.
func encoded(resp *http.Response) bool {
	return strings.EqualFold(strings.TrimSpace(resp.Header.Get("Content-Encoding")), "gzip")
}
