// Package artifact fetches model artifacts, verifies them by SHA-256 and keeps
// them in a content-addressed on-disk cache with a size budget.
//
// # Layout
//
// A Cache owns one directory:
//
//	<dir>/sha256/<hex>   verified artifacts, named by their lowercase SHA-256
//	<dir>/tmp/<hex>.part partial downloads; renamed into sha256/ only after
//	                     the digest matched, so a partial file is never returned
//
// Only one Cache (in one process) may use a directory at a time.
//
// # Restarts
//
// A download whose body breaks off (a dropped connection, a reset, or a
// minute without a byte: WithStallTimeout) is resumed
// where it stopped with a range request, when the server said it serves
// ranges (Accept-Ranges: bytes), up to 8 times with a backoff from 100 ms
// (WithResumeBackoff) doubling to 2 s; a resume request that fails on the
// way (a refused connection, a 503) is retried within those 8, one the
// server cannot satisfy (416) or refuses (403, 404) ends the download. No body is read past the
// length its server announced (Content-Length, or a 206's Content-Range).
// The request carries If-Range with the first response's strong ETag or Last-Modified,
// so a file that changed in between is never mixed with what came before:
// the server sends it whole, and the download starts again from the start
// (as it does when a load balancer's backends give the same file other
// ETags, or a proxy drops the Range), up to 8 times; the digest decides.
//
// A download that fails or is cancelled is deleted. One cut short by Close
// (the node stopping), a crash or a kill stays in tmp/: New keeps every
// <hex>.part there written to in the last 24 hours (and deletes anything
// else), and the next Fetch of that digest hashes what it holds and, unless
// it is complete already, asks only for the rest (Range, without If-Range: the first
// response's validator is not kept). A server that sends the whole file
// instead, answers with another range, or finds the range unsatisfiable,
// starts it over. In every case the SHA-256 is checked over the whole file:
// a resumed partial file that was not a prefix of it (a power cut leaves
// its last pages unwritten) is deleted and the file downloaded once more
// from the start, whose digest then decides.
//
// Files in sha256/ are indexed on restart by name, size and modification
// time, which also seeds the LRU order, and hashed again at their first
// Fetch in the new process (shared by concurrent callers like a download):
// one that is no longer what its name says (a flipped bit, a truncated file,
// anything but a regular file) is removed and fetched again. A file whose
// size or modification time changes behind a running cache (rewritten in
// place, even to the same size) is hashed again the same way.
//
// One open Cache holds its directory's lock (.lock, flock): a second, in
// this process or another (two nodes given one storage.cache_dir), fails
// New with an error saying so instead of deleting the first's partial
// downloads and evicting its files in use.
//
// # Sources
//
// Artifact.URI may be http://, https:// or file:// (an absolute path, with
// '?' and '#' escaped: a file URI with a query or fragment is ErrInvalid).
// A file:// source must be a regular file: a FIFO or a device is refused
// without being opened.
// HTTP(S) artifacts must carry a SHA-256. A file:// artifact with a SHA-256 is
// copied into the cache while being hashed, so the returned path is immutable
// and managed like a download. A file:// artifact without a SHA-256 is used in
// place: Fetch checks it exists and fits the size limits and returns its path
// unverified; it is not cached, counted by Usage or evicted.
//
// # Sharing and cancellation
//
// Concurrent Fetch calls for the same digest share one download. The download
// runs in a goroutine owned by the Cache and keeps going while at least one
// caller still waits for it: a caller whose context ends returns at once with
// the context's error without disturbing the others. When the last waiting
// caller gives up, the download is cancelled and its partial file removed
// before that caller's Fetch returns. Close cancels every download.
//
// # Budget and eviction
//
// Deployments pin the artifacts they use with Acquire and unpin them with
// Release. Pinning by digest works before the artifact is cached, so the safe
// order is Acquire, then Fetch. Whenever the cached bytes exceed the budget
// after a fetch or a Release, unpinned artifacts are removed: first any that
// alone exceed the whole budget, then the least recently used (by Fetch,
// Acquire or Release). An artifact larger than the budget is still fetched,
// with a warning. After Close, Release evicts nothing: the pins a stopping
// node drops are those of the deployments its next run restores.
//
// # Example
//
//	c, err := artifact.New("/var/lib/cyxwiz/artifacts", 50<<30, log)
//	if err != nil { ... }
//	defer c.Close()
//	if err := c.Acquire(a.SHA256); err != nil { ... }
//	defer c.Release(a.SHA256)
//	path, err := c.Fetch(ctx, a, func(done, total int64) { ... })
package artifact
