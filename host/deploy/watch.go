package deploy

import (
	"context"
	"fmt"
	"net/url"
	"sync"
)

// Event is one change of a deployment, as seen by watchers.
type Event struct {
	Status   Status
	Snapshot bool // part of the initial snapshot a watcher asked for
}

// Watcher receives events until it is closed or falls behind.
type Watcher struct {
	C <-chan Event
	c chan Event
	b *broker
	// ids filters events; empty = all deployments.
	ids map[string]bool
	// snap holds the Seq of each deployment in the snapshot: a live event
	// published after it was read but made before is dropped.
	snap map[string]uint64
	// Overflowed is set (before C closes) when the watcher fell more than
	// its buffer behind and was dropped.
	overflowed bool

	// The rest is guarded by b.mu. Events that do not fit in c wait in
	// queue, moved into c by a goroutine that runs only while queue is not
	// empty (pump): c is small, and a watcher that keeps up holds no more.
	queue    []Event
	max      int           // events c and queue may hold together: the lag allowed
	pumping  chan struct{} // closed when the running pump exits; nil when none runs
	ended    bool          // overflowed or the node's watches stopped: no more events; c closes once queue is delivered
	removed  bool          // closed: stop is closed, queue is dropped
	stop     chan struct{}
	isClosed bool // c is closed
}

// Overflowed reports whether the watcher was dropped for falling behind.
func (w *Watcher) Overflowed() bool {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.overflowed
}

// Close stops the watcher; C is closed when it returns.
func (w *Watcher) Close() { w.b.remove(w) }

// watcherBuffer is how many events a watcher may lag behind.
const watcherBuffer = 1024

// watcherChan is the capacity of a watcher's channel (besides its
// snapshot); the rest of its lag waits in its queue. A channel of
// watcherBuffer events (728 bytes each) took 745 KB per watcher, reader or
// not: a client's 256 idle watch streams on one connection held 190 MB.
const watcherChan = 16

// broker fans events out to watchers without ever blocking a publisher.
type broker struct {
	mu       sync.Mutex
	watchers map[*Watcher]struct{}
	closed   bool
}

func (b *broker) publish(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for w := range b.watchers {
		if len(w.ids) > 0 && !w.ids[e.Status.ID] {
			continue
		}
		if seq, ok := w.snap[e.Status.ID]; ok && e.Status.Seq <= seq {
			continue
		}
		if w.pumping == nil {
			select {
			case w.c <- e:
				continue
			default:
			}
		}
		if len(w.c)+len(w.queue) >= w.max {
			w.overflowed, w.ended = true, true
			delete(b.watchers, w)
			if w.pumping == nil {
				w.closeLocked()
			} // else the pump closes c once it has delivered the queue
			continue
		}
		w.queue = append(w.queue, e)
		if w.pumping == nil {
			w.pumping = make(chan struct{})
			go b.pump(w, w.pumping)
		}
	}
}

// pump moves w's queued events into w.c, in order, until the queue is
// empty (or w is closed), then exits.
func (b *broker) pump(w *Watcher, done chan struct{}) {
	defer close(done)
	for {
		b.mu.Lock()
		if w.removed || len(w.queue) == 0 {
			w.queue, w.pumping = nil, nil
			if w.removed || w.ended {
				w.closeLocked()
			}
			b.mu.Unlock()
			return
		}
		e := w.queue[0]
		w.queue[0] = Event{}
		w.queue = w.queue[1:]
		b.mu.Unlock()
		select {
		case w.c <- e:
		case <-w.stop:
		}
	}
}

// closeLocked closes w's channel once.
func (w *Watcher) closeLocked() {
	if !w.isClosed {
		w.isClosed = true
		close(w.c)
	}
}

// stopLocked closes w for good: no more events, c closed now or by its
// pump as it exits (returned: wait for it).
func (b *broker) stopLocked(w *Watcher) (pump chan struct{}) {
	delete(b.watchers, w)
	if w.removed {
		return w.pumping
	}
	w.removed = true
	close(w.stop)
	if w.pumping == nil {
		w.queue = nil
		w.closeLocked()
	}
	return w.pumping
}

func (b *broker) remove(w *Watcher) {
	b.mu.Lock()
	pump := b.stopLocked(w)
	b.mu.Unlock()
	if pump != nil {
		<-pump
	}
}

func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for w := range b.watchers {
		// What was published stays readable, then C closes (its pump
		// closes it once the queue is delivered, or Close ends it).
		delete(b.watchers, w)
		w.ended = true
		if w.pumping == nil {
			w.closeLocked()
		}
	}
}

// StopWatches ends every watch, present and future, as Close does: their
// channels close. A node calls it when it starts shutting down, so that
// watch streams do not hold the drain of its calls.
func (m *Manager) StopWatches() { m.watch.close() }

// Watch subscribes to deployment changes (of ids, or all when empty). With
// snapshot, the current status of each watched deployment comes first.
func (m *Manager) Watch(ids []string, snapshot bool) *Watcher {
	w := &Watcher{b: &m.watch, stop: make(chan struct{})}
	if len(ids) > 0 {
		w.ids = map[string]bool{}
		for _, id := range ids {
			w.ids[id] = true
		}
	}
	b := &m.watch
	b.mu.Lock()
	defer b.mu.Unlock()
	// The snapshot is read under the broker's lock, so no change falls
	// between it and the live events; the channel has room for all of it
	// besides the live buffer (a snapshot was cut short, silently, past
	// 1024 deployments).
	var snap []*Deployment
	if snapshot && !b.closed {
		for _, d := range m.List() {
			if len(w.ids) == 0 || w.ids[d.id] {
				snap = append(snap, d)
			}
		}
	}
	c := make(chan Event, watcherChan+len(snap))
	w.C, w.c, w.max = c, c, watcherBuffer+len(snap)
	if b.closed {
		w.removed = true
		close(w.stop)
		w.closeLocked()
		return w
	}
	if snapshot {
		w.snap = make(map[string]uint64, len(snap))
		for _, d := range snap {
			st := d.Status()
			w.snap[d.id] = st.Seq
			select {
			case c <- Event{Status: st, Snapshot: true}:
			default:
			}
		}
	}
	if b.watchers == nil {
		b.watchers = map[*Watcher]struct{}{}
	}
	b.watchers[w] = struct{}{}
	return w
}

// fileURIPath turns file:///abs/path into /abs/path.
func fileURIPath(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "file" || u.Path == "" {
		return "", fmt.Errorf("%w: %q is not a file:// URI", ErrInvalidSpec, uri)
	}
	return u.Path, nil
}

// WaitFor blocks until deployment id's status satisfies until, and returns
// that status; it fails when ctx ends first.
func (m *Manager) WaitFor(ctx context.Context, id string, until func(Status) bool) (Status, error) {
	w := m.Watch([]string{id}, true)
	defer w.Close()
	for {
		select {
		case e, ok := <-w.C:
			if !ok {
				if d, err := m.Get(id); err == nil && until(d.Status()) {
					return d.Status(), nil
				}
				return Status{}, fmt.Errorf("wait for %s: watch ended", id)
			}
			if until(e.Status) {
				return e.Status, nil
			}
		case <-ctx.Done():
			return Status{}, fmt.Errorf("wait for %s: %w", id, ctx.Err())
		}
	}
}

// Settled is true once a deployment has finished coming up: serving, failed or stopped.
func Settled(s Status) bool { return s.State.Serving() || s.State == Failed || s.State == Stopped }
