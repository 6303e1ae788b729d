// Command latency-batch is a batch policy guest: run as soon as the queue
// holds a full batch or its oldest request has waited "max_wait_us"
// (config, default 2000; a value past 2^63 ns waits the longest a
// Duration holds); otherwise wait for the remaining time. A run
// takes the oldest requests whose rows fit in the batch (at least one).
package main

import (
	"math"
	"strconv"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{BatchPolicy: policy}) }

func main() {}

var maxWait time.Duration = -1

func policy(q sdk.QueueState) (sdk.Decision, error) {
	if maxWait < 0 {
		maxWait = 2 * time.Millisecond
		if v, ok := sdk.Config("max_wait_us"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				// Saturated, as the host reads wait_us: the plain
				// product wrapped past 2^63 ns (about 292 years), and
				// a negative maxWait ran every queue at once.
				maxWait = math.MaxInt64
				if n <= math.MaxInt64/int64(time.Microsecond) {
					maxWait = time.Duration(n) * time.Microsecond
				}
			}
		}
	}
	if q.Queued == 0 || len(q.Rows) == 0 {
		return sdk.Decision{Wait: maxWait}, nil
	}
	var total int64
	fit := 0
	for _, r := range q.Rows {
		if q.MaxBatch > 0 && total+r > q.MaxBatch {
			break
		}
		total += r
		fit++
	}
	full := fit < len(q.Rows) || (q.MaxBatch > 0 && total >= q.MaxBatch)
	if full || q.OldestWait >= maxWait {
		return sdk.Decision{Run: max(fit, 1)}, nil
	}
	return sdk.Decision{Wait: maxWait - q.OldestWait}, nil
}
