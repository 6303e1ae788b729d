package engine

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultQueueCapacity is the queue bound used when Config.QueueCapacity is 0.
const DefaultQueueCapacity = 1024

// Config tunes one deployment's scheduler. The zero value is valid: no
// batching, one instance, a queue of DefaultQueueCapacity.
type Config struct {
	// MaxBatchSize is the most rows (the sum of the requests' dimension 0)
	// one execution may hold. 0 or 1 turns batching off: every request runs
	// alone, as given. Default: 0.
	MaxBatchSize int
	// PreferredBatchSizes are row counts worth dispatching at once, before
	// MaxQueueDelay runs out; as in Triton, the largest preferred size the
	// oldest requests make up goes first, even from a full batch. Each must
	// be in [1, MaxBatchSize]; only meaningful with batching. Default: none.
	PreferredBatchSizes []int
	// MaxQueueDelay is how long the oldest request of a batch may wait for
	// the batch to fill. 0 dispatches as soon as an instance is free, which
	// is best for latency; requests still batch up while every instance is
	// busy. Ignored without batching. Default: 0.
	MaxQueueDelay time.Duration
	// QueueCapacity bounds the requests accepted but not yet handed to an
	// instance; beyond it Infer fails at once with ErrQueueFull.
	// Default: DefaultQueueCapacity.
	QueueCapacity int
	// Instances is the number of executions that may run at once on the
	// model, each on its own worker goroutine. Default: 1.
	Instances int
	// Policy, when set (and batching is on), decides when a pending batch
	// runs instead of PreferredBatchSizes; MaxQueueDelay (or
	// DefaultPolicyBound when 0) still bounds every request's wait. A
	// policy error runs the batch at once. Not serialised.
	Policy BatchPolicy `json:"-"`
	// Isolate, when set, reports whether a batch's error may come from the
	// values of one of its requests (an index out of range, say) rather
	// than from the model or the node: the batch's requests then run again
	// one by one, so that only the requests at fault fail. nil: a batch's
	// error fails every request in it. Not serialised.
	Isolate func(error) bool `json:"-"`
	// BatchValues, when set, gives the model call of a batch of several
	// requests, and a Policy call about them, the values of its requests'
	// contexts (given in order): the call sees the values of the context
	// it returns. That call belongs to no single caller: it still runs
	// under the scheduler's own cancellation (only a Close that gives up
	// ends it), whatever the returned context's deadline or Done. nil: it
	// sees none of its callers' values. Not serialised.
	BatchValues func(ctxs []context.Context) context.Context `json:"-"`
}

// DefaultPolicyBound caps a request's wait under a Policy when
// MaxQueueDelay is 0.
const DefaultPolicyBound = 5 * time.Millisecond

// BatchPolicy decides, for the oldest pending batch, how many of its
// requests to run now (Decision.Run > 0) or how long to wait before asking
// again; a request joining the batch has it asked again sooner. It is called
// from the batcher goroutine, so it must be quick.
type BatchPolicy func(ctx context.Context, q QueueState) (Decision, error)

// QueueState is what a BatchPolicy sees of a pending batch.
type QueueState struct {
	Queued     int           // requests in the batch
	OldestWait time.Duration // how long its oldest request has waited
	Rows       []int64       // each request's rows, oldest first
	MaxBatch   int64         // Config.MaxBatchSize
}

// Decision is a BatchPolicy's answer.
type Decision struct {
	Run  int           // requests to run now, oldest first; 0 = wait
	Wait time.Duration // when Run is 0: how long to wait before asking again, unless a request joins; 0: until one joins
}

// policyBound is the longest a request may wait under a Policy.
func (c Config) policyBound() time.Duration {
	if c.MaxQueueDelay > 0 {
		return c.MaxQueueDelay
	}
	return DefaultPolicyBound
}

// batching reports whether requests may be joined.
func (c Config) batching() bool { return c.MaxBatchSize > 1 }

// withDefaults fills the zero fields that have a default.
func (c Config) withDefaults() Config {
	if c.QueueCapacity == 0 {
		c.QueueCapacity = DefaultQueueCapacity
	}
	if c.Instances == 0 {
		c.Instances = 1
	}
	c.PreferredBatchSizes = append([]int(nil), c.PreferredBatchSizes...)
	return c
}

// Upper bounds of the configuration: the scheduler allocates by them (a
// queue channel, a histogram, a goroutine per instance), and a spec from the
// network must not make it allocate gigabytes.
const (
	MaxBatchSizeLimit  = 1 << 16
	QueueCapacityLimit = 1 << 20
	InstancesLimit     = 1024
	MaxQueueDelayLimit = time.Hour
)

// Validate returns every problem with c at once, each naming its field, joined
// and wrapping ErrInvalidConfig; nil when c is usable.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), ErrInvalidConfig))
	}
	if c.MaxBatchSize < 0 || c.MaxBatchSize > MaxBatchSizeLimit {
		bad("max_batch_size", "must be in [0, %d], got %d", MaxBatchSizeLimit, c.MaxBatchSize)
	}
	if len(c.PreferredBatchSizes) > 0 && !c.batching() {
		bad("preferred_batch_sizes", "need max_batch_size > 1")
	} else {
		for _, p := range c.PreferredBatchSizes {
			if p < 1 || p > c.MaxBatchSize {
				bad("preferred_batch_sizes", "%d is outside [1, max_batch_size=%d]", p, c.MaxBatchSize)
			}
		}
	}
	if c.MaxQueueDelay < 0 || c.MaxQueueDelay > MaxQueueDelayLimit {
		bad("max_queue_delay", "must be in [0, %v], got %v", MaxQueueDelayLimit, c.MaxQueueDelay)
	}
	if c.QueueCapacity < 0 || c.QueueCapacity > QueueCapacityLimit {
		bad("queue_capacity", "must be in [0, %d], got %d", QueueCapacityLimit, c.QueueCapacity)
	}
	if c.Instances < 0 || c.Instances > InstancesLimit {
		bad("instances", "must be in [0, %d], got %d", InstancesLimit, c.Instances)
	}
	return errors.Join(errs...)
}
