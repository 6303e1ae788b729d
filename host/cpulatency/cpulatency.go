// Package cpulatency keeps idle CPUs quick to wake while the node serves
// requests, through Linux's CPU latency QoS interface (/dev/cpu_dma_latency).
//
// Between two requests a CPU that has nothing to do goes idle. On a virtual
// machine the deepest idle state halts the vCPU, and waking it again costs a
// trip through the hypervisor: bench-onnx measured about 8 such wake-ups per
// KServe round trip and 100 µs of added latency at concurrency 1 on a 2-vCPU
// KVM guest. A QoS request of 0 µs makes the kernel poll instead of halting
// (the cpuidle "POLL" state), so the wake-up is a few µs.
//
// Polling burns the idle CPU, so a Governor holds the request only while
// requests arrive, and drops it once none has come for a while. The
// interface needs root (the device is root-only by default); Open fails
// cleanly without it.
package cpulatency

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync/atomic"
	"time"
)

// DefaultPath is Linux's CPU latency QoS device.
const DefaultPath = "/dev/cpu_dma_latency"

// noLimit is the kernel's default CPU latency constraint (2000 s in µs):
// writing it removes this request's effect.
const noLimit = 2_000_000_000

// Request is one CPU latency QoS request: it holds while the file is open,
// with the last value written.
type Request struct {
	f    *os.File
	path string
}

// Open adds a request that limits nothing yet (the kernel's default).
func Open(path string) (*Request, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("cpu latency QoS: %w", err)
	}
	r := &Request{f: f, path: path}
	if err := r.Reset(); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// Set asks that no idle CPU take longer than limit to wake (rounded down to
// whole µs; 0 means poll). It lasts until the next Set, Reset or Close.
func (r *Request) Set(limit time.Duration) error {
	return r.write(min(max(limit.Microseconds(), 0), noLimit))
}

// Reset withdraws the limit: idle CPUs may sleep as deep as they like.
func (r *Request) Reset() error { return r.write(noLimit) }

// write sends the value as the binary s32 the device takes.
func (r *Request) write(us int64) error {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], uint32(int32(min(us, math.MaxInt32))))
	if _, err := r.f.Write(b[:]); err != nil {
		return fmt.Errorf("cpu latency QoS: set %d µs on %s: %w", us, r.path, err)
	}
	return nil
}

// Close removes the request.
func (r *Request) Close() error { return r.f.Close() }

// Governor holds a Request at a limit while Touch is called, and resets it
// once hold has passed without a call. Touch is cheap enough to call on every
// request; Run applies the changes.
type Governor struct {
	req   *Request
	limit time.Duration
	hold  time.Duration
	log   *slog.Logger

	// state is idle, held or seen. It is one word so that Run's decision
	// to withdraw the limit (held → idle) and a Touch (held → seen, or
	// idle → seen and a wake) cannot cross: a Touch either stops the
	// withdrawal or comes after it and wakes Run.
	state atomic.Int32
	wake  chan struct{} // Touch → Run, on idle → seen

	// testHookRelease, if set, is called after the last quiet look and
	// before the limit is withdrawn (tests only).
	testHookRelease func()
}

const (
	idle int32 = iota // the limit is withdrawn (or never set); the next Touch wakes Run
	held              // the limit is set, and no Touch came since Run last looked
	seen              // a Touch came since Run last looked (or woke Run to set the limit)
)

// NewGovernor returns a Governor over req. hold must be positive.
func NewGovernor(req *Request, limit, hold time.Duration, log *slog.Logger) *Governor {
	return &Governor{req: req, limit: limit, hold: hold, log: log, wake: make(chan struct{}, 1)}
}

// Touch says that a request has arrived. Under steady traffic it only
// reads: the state is already seen.
func (g *Governor) Touch() {
	for {
		switch g.state.Load() {
		case seen:
			return
		case held:
			if g.state.CompareAndSwap(held, seen) {
				return
			}
		default: // idle
			if g.state.CompareAndSwap(idle, seen) {
				select {
				case g.wake <- struct{}{}:
				default:
				}
				return
			}
		}
	}
}

// Run sets the limit when Touch is called and resets it once hold (up to a
// quarter more) has passed without a Touch, until ctx ends; then it resets
// the limit. If the device refuses a value, Run logs it and stops governing
// (the node serves on without it).
func (g *Governor) Run(ctx context.Context) error {
	// Touch only marks the state seen; Run looks at it every quarter hold
	// and withdraws the limit after four looks in a row find it unmarked.
	const looks = 4
	tick := time.NewTicker(max(g.hold/looks, time.Microsecond))
	tick.Stop()
	defer tick.Stop()
	defer g.req.Reset() //nolint:errcheck // best effort: Close removes it anyway
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.wake:
		}
		if err := g.req.Set(g.limit); err != nil {
			g.log.Warn("cpu latency limit not applied", "err", err)
			return nil
		}
		g.log.Debug("cpu latency limit set", "limit", g.limit)
		g.state.Store(held) // the Touch that woke Run counts from now
		tick.Reset(max(g.hold/looks, time.Microsecond))
		for quiet := 0; ; {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			if g.state.CompareAndSwap(seen, held) {
				quiet = 0
				continue
			}
			if quiet++; quiet < looks {
				continue
			}
			if g.testHookRelease != nil {
				g.testHookRelease()
			}
			// A Touch since the last look leaves the state seen: the
			// limit stays, and the next look counts from it. Once idle,
			// a Touch wakes Run again, which then sets the limit again.
			if g.state.CompareAndSwap(held, idle) {
				break
			}
		}
		tick.Stop()
		if err := g.req.Reset(); err != nil {
			g.log.Warn("cpu latency limit not withdrawn", "err", err)
			return nil
		}
		g.log.Debug("cpu latency limit withdrawn", "idle_for", g.hold)
	}
}
