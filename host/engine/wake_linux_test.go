package engine

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A waker whose timerfd cannot be read (the runtime's poller refused it)
// falls back to Go timers: the batcher still wakes. Reading it panicked,
// taking the node down.
func TestWakerFallsBackWhenTimerfdFails(t *testing.T) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	wr.Close() // reads of r fail at once (EOF), as an unpollable timerfd's would
	c := make(chan struct{}, 1)
	w := &fdWaker{fd: fd, f: r, c: c, exited: make(chan struct{}), fallback: goWakerOn(c)}
	go w.loop()
	defer w.Close()
	select {
	case <-w.C(): // the failure itself wakes the batcher
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up when reading failed")
	}
	if !w.broken.Load() {
		t.Fatal("not marked broken")
	}
	w.Reset(time.Millisecond)
	select {
	case <-w.C():
	case <-time.After(5 * time.Second):
		t.Fatal("the fallback timer never fired")
	}
}

// On Linux the batcher's waker is a timerfd: a Go timer, on an otherwise
// idle process, fires whole milliseconds late (see newWaker), which made a
// max_queue_delay of 200 µs a wait of 1.1 ms.
func TestWakerIsPreciseOnLinux(t *testing.T) {
	w := newWaker()
	defer w.Close()
	if _, ok := w.(*fdWaker); !ok {
		t.Fatalf("waker is %T, want the timerfd one", w)
	}
}
