package engine

import (
	"sync/atomic"
	"time"
)

// Stats are a scheduler's counters since New. Each field is read atomically
// on its own; the set is not one consistent snapshot.
type Stats struct {
	// Requests counts Infer calls. Every call ends as a success, a failure
	// or a cancellation.
	Requests uint64
	// Failures counts calls that returned an error other than their context
	// ending: rejections (queue full, closed, invalid) and failed executions.
	Failures uint64
	// Cancelled counts calls that returned because their context ended.
	Cancelled uint64
	// QueueFull counts rejections with ErrQueueFull (also in Failures).
	QueueFull uint64
	// Executions counts calls of Model.Infer.
	Executions uint64
	// PolicyErrors counts batch-policy calls that failed (the batch ran).
	PolicyErrors uint64
	// QueueTime sums, over the requests that ran, the time from Infer to
	// the start of their execution.
	QueueTime time.Duration
	// ComputeTime sums the time spent in executions (including joining and
	// splitting batches).
	ComputeTime time.Duration
	// BatchSizes counts executions by batch size in rows; without batching,
	// and for a request run alone without a batch dimension, the size is 1.
	BatchSizes map[int]uint64
	// Queued is the number of requests waiting now, not yet handed to an
	// instance.
	Queued int
}

// Stats returns the scheduler's counters. It is safe to call at any time.
func (s *Scheduler) Stats() Stats {
	st := Stats{
		Requests:     s.stats.requests.Load(),
		Failures:     s.stats.failures.Load(),
		Cancelled:    s.stats.cancelled.Load(),
		QueueFull:    s.stats.queueFull.Load(),
		Executions:   s.stats.executions.Load(),
		PolicyErrors: s.stats.policyErrors.Load(),
		QueueTime:    time.Duration(s.stats.queueNs.Load()),
		ComputeTime:  time.Duration(s.stats.computeNs.Load()),
		BatchSizes:   make(map[int]uint64),
		Queued:       int(max(s.queued.Load(), 0)),
	}
	for size := range s.stats.hist {
		if n := s.stats.hist[size].Load(); n > 0 {
			st.BatchSizes[size] = n
		}
	}
	return st
}

// counters are the live values behind Stats.
type counters struct {
	requests, failures, cancelled, queueFull, executions atomic.Uint64
	policyErrors                                         atomic.Uint64
	queueNs, computeNs                                   atomic.Int64
	hist                                                 []atomic.Uint64 // by rows
}

// record counts one execution of rows rows that took d.
func (c *counters) record(rows int, d time.Duration) {
	c.executions.Add(1)
	c.computeNs.Add(int64(d))
	if rows >= 0 && rows < len(c.hist) {
		c.hist[rows].Add(1)
	}
}
