package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// fakeModel computes, for an input "x" FP32 [rows, cols], the outputs
// "y" = 2x+1 ([rows, cols]) and "sum" = the sum of each row ([rows]). Row i of
// a request with id n holds n*100 + i*10 + j, so the model can tell which
// requests it saw. Other inputs are ignored.
type fakeModel struct {
	err     error         // returned by every call
	badRows bool          // return a "y" with one row too many
	panics  atomic.Bool   // panic instead of returning
	started chan int      // if set, receives each call's rows before it computes
	release chan struct{} // if set, each call waits for a value (or a close) or its ctx

	mu     sync.Mutex
	shapes [][]int64   // x's shape, per call
	seen   map[int]int // request id → rows seen
	inline []bool      // per call: did it run on the goroutine that called Scheduler.Infer?
}

// calledFromInfer reports whether Scheduler.Infer is on the calling
// goroutine's stack.
func calledFromInfer() bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.Function, ".(*Scheduler).Infer") {
			return true
		}
		if !more {
			return false
		}
	}
}

func (m *fakeModel) Infer(ctx context.Context, inputs []*tensor.Tensor, outputs []string) ([]*tensor.Tensor, error) {
	var x *tensor.Tensor
	for _, in := range inputs {
		if in.Name == "x" {
			x = in
		}
	}
	if x == nil || x.DType != tensor.FP32 || len(x.Shape) != 2 {
		return nil, fmt.Errorf("fake: need x FP32 [rows, cols]")
	}
	inline := calledFromInfer()
	m.mu.Lock()
	m.inline = append(m.inline, inline)
	m.shapes = append(m.shapes, slices.Clone(x.Shape))
	if m.seen == nil {
		m.seen = map[int]int{}
	}
	xv := tensor.View[float32](x)
	for i := range x.Shape[0] {
		m.seen[int(xv[i*x.Shape[1]])/100]++
	}
	m.mu.Unlock()

	if m.started != nil {
		m.started <- int(x.Shape[0])
	}
	if m.release != nil {
		select {
		case <-m.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if m.err != nil {
		return nil, m.err
	}
	if m.panics.Load() {
		panic("fake: boom")
	}
	y, sum := compute(x)
	if m.badRows {
		y = tensor.New("y", tensor.FP32, x.Shape[0]+1, x.Shape[1])
	}
	if len(outputs) == 0 {
		return []*tensor.Tensor{y, sum}, nil
	}
	var outs []*tensor.Tensor
	for _, name := range outputs {
		switch name {
		case "y":
			outs = append(outs, y)
		case "sum":
			outs = append(outs, sum)
		default:
			return nil, fmt.Errorf("fake: no output %q", name)
		}
	}
	return outs, nil
}

func compute(x *tensor.Tensor) (y, sum *tensor.Tensor) {
	rows, cols := x.Shape[0], x.Shape[1]
	y = tensor.New("y", tensor.FP32, rows, cols)
	sum = tensor.New("sum", tensor.FP32, rows)
	xv, yv, sv := tensor.View[float32](x), tensor.View[float32](y), tensor.View[float32](sum)
	for i := range rows {
		for j := range cols {
			v := xv[i*cols+j]
			yv[i*cols+j] = 2*v + 1
			sv[i] += v
		}
	}
	return y, sum
}

func (m *fakeModel) calls() [][]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.shapes)
}

func (m *fakeModel) rows() []int {
	var out []int
	for _, s := range m.calls() {
		out = append(out, int(s[0]))
	}
	return out
}

func (m *fakeModel) saw(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seen[id] > 0
}

// input is request id's "x": rows×cols, row i = id*100 + i*10 + j.
func input(id, rows, cols int) *tensor.Tensor {
	v := make([]float32, rows*cols)
	for i := range rows {
		for j := range cols {
			v[i*cols+j] = float32(id*100 + i*10 + j)
		}
	}
	return tensor.FromSlice("x", tensor.FP32, []int64{int64(rows), int64(cols)}, v)
}

func req(id, rows, cols int, outputs ...string) Request {
	return Request{Inputs: []*tensor.Tensor{input(id, rows, cols)}, Outputs: outputs}
}

// checkOutputs compares outs with what the model returns for r run alone.
func checkOutputs(t *testing.T, r Request, outs []*tensor.Tensor) {
	t.Helper()
	want, err := (&fakeModel{}).Infer(context.Background(), r.Inputs, r.Outputs)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != len(want) {
		t.Fatalf("got %d outputs, want %d", len(outs), len(want))
	}
	for i := range want {
		g, w := outs[i], want[i]
		if g.Name != w.Name || g.DType != w.DType || !slices.Equal(g.Shape, w.Shape) || !slices.Equal(g.Data, w.Data) {
			t.Fatalf("output %d = %s %v %v, want %s %v %v", i, g.Name, g.Shape, tensor.View[float32](g), w.Name, w.Shape, tensor.View[float32](w))
		}
	}
}

type result struct {
	outs []*tensor.Tensor
	err  error
}

// goInfer runs s.Infer in a goroutine; the test waits for the result.
func goInfer(ctx context.Context, s *Scheduler, r Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		outs, err := s.Infer(ctx, r)
		ch <- result{outs, err}
	}()
	return ch
}

func wait(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Infer did not return")
		return result{}
	}
}

// eventually waits, checking cond every millisecond, for a state that no
// channel announces (a request sitting in the queue).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func newScheduler(t *testing.T, m Model, cfg Config) *Scheduler {
	t.Helper()
	s, err := New(t.Name(), m, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func closeNow(t *testing.T, s *Scheduler) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// noLeaks fails the test if goroutines started after it are still running
// when the test ends.
func noLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		eventually(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
	})
}

var modes = []struct {
	name string
	cfg  Config
}{
	{"no batching", Config{}},
	{"batching", Config{MaxBatchSize: 8}},
}

func TestNoBatching(t *testing.T) {
	for _, instances := range []int{1, 3} {
		t.Run(fmt.Sprint("instances=", instances), func(t *testing.T) {
			noLeaks(t)
			m := &fakeModel{}
			s := newScheduler(t, m, Config{Instances: instances})
			var wg sync.WaitGroup
			var wantRows []int
			for id := range 20 {
				r := req(id, 1+id%4, 3)
				wantRows = append(wantRows, 1+id%4)
				wg.Go(func() {
					outs, err := s.Infer(context.Background(), r)
					if err != nil {
						t.Error(err)
						return
					}
					checkOutputs(t, r, outs)
				})
			}
			wg.Wait()
			got := m.rows()
			slices.Sort(got)
			slices.Sort(wantRows)
			if !slices.Equal(got, wantRows) {
				t.Fatalf("model saw rows %v, want each request alone %v", got, wantRows)
			}
			if st := s.Stats(); st.Executions != 20 || st.BatchSizes[1] != 20 || st.Requests != 20 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestBatchingSplitsResults(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"delay 0, 1 instance", Config{MaxBatchSize: 8, Instances: 1}},
		{"delay 0, 3 instances", Config{MaxBatchSize: 8, Instances: 3}},
		{"delay 2ms, 2 instances", Config{MaxBatchSize: 8, MaxQueueDelay: 2 * time.Millisecond, Instances: 2}},
		{"preferred 4, delay 2ms", Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4}, MaxQueueDelay: 2 * time.Millisecond}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			m := &fakeModel{}
			s := newScheduler(t, m, tc.cfg)
			const n = 64
			total := 0
			var wg sync.WaitGroup
			for id := range n {
				rows := 1 + rand.IntN(3)
				total += rows
				var r Request
				if id%5 == 0 {
					r = req(id, rows, 2, "sum") // a different output set: batches apart
				} else {
					r = req(id, rows, 2)
				}
				wg.Go(func() {
					outs, err := s.Infer(context.Background(), r)
					if err != nil {
						t.Error(err)
						return
					}
					checkOutputs(t, r, outs)
				})
			}
			wg.Wait()
			sum := 0
			for _, rows := range m.rows() {
				if rows > tc.cfg.MaxBatchSize {
					t.Errorf("batch of %d rows > max %d", rows, tc.cfg.MaxBatchSize)
				}
				sum += rows
			}
			if sum != total {
				t.Fatalf("model saw %d rows, want %d", sum, total)
			}
			st := s.Stats()
			var hist uint64
			for size, c := range st.BatchSizes {
				hist += c
				if size < 1 || size > tc.cfg.MaxBatchSize {
					t.Errorf("histogram has size %d", size)
				}
			}
			if st.Executions != uint64(len(m.rows())) || hist != st.Executions || st.Requests != n || st.Failures != 0 {
				t.Fatalf("stats %+v; model calls %d", st, len(m.rows()))
			}
			t.Logf("%d requests in %d executions", n, st.Executions)
		})
	}
}

func TestPreferredBatchSizeDispatches(t *testing.T) {
	noLeaks(t)
	m := &fakeModel{started: make(chan int, 10)}
	// The delay is an hour: only the preferred size, then Close, dispatch.
	s := newScheduler(t, m, Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4}, MaxQueueDelay: time.Hour})
	reqs := make([]Request, 6)
	results := make([]<-chan result, 6)
	for i := range reqs {
		reqs[i] = req(i, 1, 2)
		results[i] = goInfer(context.Background(), s, reqs[i])
	}
	if rows := <-m.started; rows != 4 {
		t.Fatalf("first batch has %d rows, want the preferred 4", rows)
	}
	eventually(t, "2 requests left waiting", func() bool { return s.Stats().Queued == 2 })
	closeNow(t, s) // drains without waiting for the delay
	for i, ch := range results {
		r := wait(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		checkOutputs(t, reqs[i], r.outs)
	}
	if got := m.rows(); !slices.Equal(got, []int{4, 2}) {
		t.Fatalf("batches %v, want [4 2]", got)
	}
}

func TestPreferredBatchSizeCutsPendingBatch(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	m := &fakeModel{started: make(chan int, 10), release: release}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, PreferredBatchSizes: []int{2}, MaxQueueDelay: time.Hour})
	blocker := goInfer(context.Background(), s, req(100, 2, 2)) // preferred: runs at once
	<-m.started
	var results []<-chan result
	for i := range 3 {
		results = append(results, goInfer(context.Background(), s, req(i, 1, 2)))
	}
	eventually(t, "3 queued", func() bool { return s.Stats().Queued == 3 })
	close(release)
	// 3 rows wait; the longest prefix of a preferred size (2) goes, 1 stays.
	if rows := <-m.started; rows != 2 {
		t.Fatalf("second batch has %d rows, want 2", rows)
	}
	eventually(t, "1 left waiting", func() bool { return s.Stats().Queued == 1 })
	closeNow(t, s)
	for _, ch := range append(results, blocker) {
		if r := wait(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if got := m.rows(); !slices.Equal(got, []int{2, 2, 1}) {
		t.Fatalf("batches %v, want [2 2 1]", got)
	}
}

func TestMaxQueueDelayDispatchesPartialBatch(t *testing.T) {
	noLeaks(t)
	const delay = 200 * time.Millisecond
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, MaxQueueDelay: delay})
	start := time.Now()
	var results []<-chan result
	var reqs []Request
	for i := range 3 {
		reqs = append(reqs, req(i, 1, 2))
		results = append(results, goInfer(context.Background(), s, reqs[i]))
	}
	for i, ch := range results {
		r := wait(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		checkOutputs(t, reqs[i], r.outs)
	}
	if el := time.Since(start); el < delay {
		t.Fatalf("partial batch ran after %v, before the %v delay", el, delay)
	}
	if got := m.rows(); !slices.Equal(got, []int{3}) {
		t.Fatalf("batches %v, want one partial batch [3]", got)
	}
}

func TestZeroDelayDispatchesAtOnce(t *testing.T) {
	noLeaks(t)
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 8})
	for i := range 3 {
		r := req(i, 1, 2)
		outs, err := s.Infer(context.Background(), r) // would hang if it waited for a full batch
		if err != nil {
			t.Fatal(err)
		}
		checkOutputs(t, r, outs)
	}
	if got := m.rows(); !slices.Equal(got, []int{1, 1, 1}) {
		t.Fatalf("batches %v", got)
	}
}

// An idle instance runs a request on its caller's goroutine when nothing is
// queued and no delay or policy could batch it; otherwise it is queued and a
// worker runs it.
func TestIdleInstanceRunsInline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		inline bool
	}{
		{"no batching", Config{}, true},
		{"batching", Config{MaxBatchSize: 8}, true},
		{"queue delay", Config{MaxBatchSize: 8, MaxQueueDelay: time.Millisecond}, false},
		{"policy", Config{MaxBatchSize: 8, Policy: func(context.Context, QueueState) (Decision, error) { return Decision{Run: 1}, nil }}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			release := make(chan struct{})
			m := &fakeModel{started: make(chan int, 10), release: release}
			s := newScheduler(t, m, tc.cfg)
			first := goInfer(context.Background(), s, req(0, 1, 2))
			<-m.started
			second := goInfer(context.Background(), s, req(1, 1, 2)) // the one instance is busy
			eventually(t, "second queued", func() bool { return s.Stats().Queued == 1 })
			close(release)
			for _, ch := range []<-chan result{first, second} {
				if r := wait(t, ch); r.err != nil {
					t.Fatal(r.err)
				}
			}
			m.mu.Lock()
			got := slices.Clone(m.inline)
			m.mu.Unlock()
			if want := []bool{tc.inline, false}; !slices.Equal(got, want) {
				t.Fatalf("ran inline: %v, want %v", got, want)
			}
			if st := s.Stats(); st.Requests != 2 || st.Executions != 2 || st.Failures != 0 || st.Queued != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestQueueFull(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			noLeaks(t)
			release := make(chan struct{})
			m := &fakeModel{started: make(chan int, 10), release: release}
			cfg := mode.cfg
			cfg.QueueCapacity = 2
			s := newScheduler(t, m, cfg)
			running := goInfer(context.Background(), s, req(0, 1, 2))
			<-m.started
			queued := []<-chan result{
				goInfer(context.Background(), s, req(1, 1, 2)),
				goInfer(context.Background(), s, req(2, 1, 2)),
			}
			eventually(t, "2 queued", func() bool { return s.Stats().Queued == 2 })

			start := time.Now()
			_, err := s.Infer(context.Background(), req(3, 1, 2))
			if !errors.Is(err, ErrQueueFull) {
				t.Fatalf("err = %v, want ErrQueueFull", err)
			}
			if el := time.Since(start); el > time.Second {
				t.Fatalf("rejection took %v", el)
			}
			close(release)
			for _, ch := range append(queued, running) {
				if r := wait(t, ch); r.err != nil {
					t.Fatal(r.err)
				}
			}
			if m.saw(3) {
				t.Fatal("rejected request ran")
			}
			if st := s.Stats(); st.QueueFull != 1 || st.Failures != 1 || st.Requests != 4 || st.Queued != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestQueuedRequestEndsWithoutRunning(t *testing.T) {
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		cancel  bool // cancel once queued (else wait for the deadline)
		wantErr error
	}{
		{
			name:    "cancelled",
			ctx:     func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			cancel:  true,
			wantErr: context.Canceled,
		},
		{
			name: "deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 20*time.Millisecond)
			},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, mode := range modes {
		for _, tc := range tests {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				noLeaks(t)
				release := make(chan struct{})
				m := &fakeModel{started: make(chan int, 10), release: release}
				s := newScheduler(t, m, mode.cfg)
				running := goInfer(context.Background(), s, req(0, 1, 2))
				<-m.started

				ctx, cancel := tc.ctx()
				defer cancel()
				gone := goInfer(ctx, s, req(1, 1, 2))
				eventually(t, "request queued", func() bool { return s.Stats().Queued == 1 })
				if tc.cancel {
					cancel()
				}
				if r := wait(t, gone); !errors.Is(r.err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", r.err, tc.wantErr)
				}

				close(release)
				if r := wait(t, running); r.err != nil {
					t.Fatal(r.err)
				}
				// A later request runs after the dropped one would have.
				after := req(2, 1, 2)
				outs, err := s.Infer(context.Background(), after)
				if err != nil {
					t.Fatal(err)
				}
				checkOutputs(t, after, outs)
				if m.saw(1) {
					t.Fatal("the model ran a request whose context had ended")
				}
				if st := s.Stats(); st.Cancelled != 1 || st.Failures != 0 || st.Queued != 0 {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

func TestContextDoneBeforeInfer(t *testing.T) {
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 4})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Infer(ctx, req(1, 1, 2)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if len(m.calls()) != 0 {
		t.Fatal("model ran")
	}
}

func TestIncompatibleRequestsBatchApart(t *testing.T) {
	noLeaks(t)
	m := &fakeModel{}
	// Nothing is due before Close (an hour's delay, no full batch), so every
	// request is pending when Close drains them: the batches are exact.
	s := newScheduler(t, m, Config{MaxBatchSize: 8, MaxQueueDelay: time.Hour})
	reqs := []Request{
		req(1, 1, 2),
		req(2, 2, 3), // other trailing dim
		req(3, 1, 2),
		req(4, 1, 3),
		req(5, 1, 2, "sum"), // other outputs
		{Inputs: []*tensor.Tensor{input(6, 1, 2), tensor.New("extra", tensor.Int8, 1)}}, // other inputs
		req(7, 3, 2),
	}
	var results []<-chan result
	for _, r := range reqs {
		results = append(results, goInfer(context.Background(), s, r))
		// One at a time, so that batches form in a known order.
		eventually(t, "request queued", func() bool { return s.Stats().Queued == len(results) })
	}
	closeNow(t, s)
	for i, ch := range results {
		r := wait(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		checkOutputs(t, reqs[i], r.outs)
	}
	want := [][]int64{{5, 2}, {3, 3}, {1, 2}, {1, 2}}
	if got := m.calls(); !reflect.DeepEqual(got, want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

func TestFullBatchSealsAndStartsAnother(t *testing.T) {
	noLeaks(t)
	m := &fakeModel{started: make(chan int, 10)}
	s := newScheduler(t, m, Config{MaxBatchSize: 4, MaxQueueDelay: time.Hour})
	a := goInfer(context.Background(), s, req(1, 3, 2))
	eventually(t, "queued", func() bool { return s.Stats().Queued == 1 })
	b := goInfer(context.Background(), s, req(2, 2, 2)) // 3+2 > 4: the first batch is sealed and runs
	if rows := <-m.started; rows != 3 {
		t.Fatalf("first batch %d rows, want 3", rows)
	}
	if r := wait(t, a); r.err != nil {
		t.Fatal(r.err)
	}
	eventually(t, "second queued", func() bool { return s.Stats().Queued == 1 })
	c := goInfer(context.Background(), s, req(3, 2, 2)) // 2+2 = max: runs at once
	if rows := <-m.started; rows != 4 {
		t.Fatalf("second batch %d rows, want 4", rows)
	}
	for _, ch := range []<-chan result{b, c} {
		if r := wait(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// TestDueBatchSharedAmongIdleInstances: a full batch with two instances idle
// runs as two halves at once, not as one batch on one instance while the
// other idles (a closed loop of max_batch_size clients did that every call).
func TestDueBatchSharedAmongIdleInstances(t *testing.T) {
	noLeaks(t)
	m := &fakeModel{started: make(chan int, 10), release: make(chan struct{})}
	s := newScheduler(t, m, Config{MaxBatchSize: 8, MaxQueueDelay: time.Hour, Instances: 2})
	var chans []<-chan result
	for i := range 8 {
		chans = append(chans, goInfer(context.Background(), s, req(i+1, 1, 2)))
	}
	for range 2 {
		select {
		case rows := <-m.started:
			if rows != 4 {
				t.Fatalf("a batch of %d rows, want two of 4 running at once", rows)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("two batches did not run at once")
		}
	}
	close(m.release)
	for _, ch := range chans {
		if r := wait(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

func TestModelErrorReachesEveryCaller(t *testing.T) {
	errModel := errors.New("device lost")
	tests := []struct {
		name    string
		m       *fakeModel
		wantErr error
	}{
		{"model error", &fakeModel{err: errModel}, errModel},
		{"output not splittable", &fakeModel{badRows: true}, tensor.ErrIncompatible},
		{"model panics", panicky(), ErrModelPanic},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			s := newScheduler(t, tc.m, Config{MaxBatchSize: 8, PreferredBatchSizes: []int{3}, MaxQueueDelay: time.Hour})
			var results []<-chan result
			for i := range 3 {
				results = append(results, goInfer(context.Background(), s, req(i, 1, 2)))
			}
			for _, ch := range results {
				if r := wait(t, ch); !errors.Is(r.err, tc.wantErr) || r.outs != nil {
					t.Fatalf("got %v, %v; want %v", r.outs, r.err, tc.wantErr)
				}
			}
			if got := tc.m.rows(); !slices.Equal(got, []int{3}) {
				t.Fatalf("batches %v, want [3]", got)
			}
			if st := s.Stats(); st.Failures != 3 || st.Executions != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func panicky() *fakeModel {
	m := &fakeModel{}
	m.panics.Store(true)
	return m
}

func TestModelPanicWithoutBatching(t *testing.T) {
	m := panicky()
	s := newScheduler(t, m, Config{})
	if _, err := s.Infer(context.Background(), req(1, 1, 2)); !errors.Is(err, ErrModelPanic) {
		t.Fatalf("err = %v, want ErrModelPanic", err)
	}
	m.panics.Store(false)
	r := req(2, 1, 2)
	outs, err := s.Infer(context.Background(), r) // the worker survived
	if err != nil {
		t.Fatal(err)
	}
	checkOutputs(t, r, outs)
	if st := s.Stats(); st.Failures != 1 || st.Executions != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestInvalidRequests(t *testing.T) {
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 4})
	bad := input(1, 1, 2)
	bad.Data = bad.Data[:4]
	tests := []struct {
		name string
		r    Request
	}{
		{"nil input", Request{Inputs: []*tensor.Tensor{nil}}},
		{"too many rows", req(1, 5, 2)},
		{"data does not match shape", Request{Inputs: []*tensor.Tensor{bad}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Infer(context.Background(), tc.r); !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
		})
	}
	if len(m.calls()) != 0 {
		t.Fatal("model ran an invalid request")
	}
	if st := s.Stats(); st.Failures != uint64(len(tests)) {
		t.Fatalf("stats %+v", st)
	}
}

func TestRequestWithoutBatchDimensionRunsAlone(t *testing.T) {
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 4})
	tests := []struct {
		name string
		r    Request
	}{
		{"dim 0 differs", Request{Inputs: []*tensor.Tensor{input(1, 2, 2), tensor.New("extra", tensor.Int8, 3)}}},
		{"scalar input", Request{Inputs: []*tensor.Tensor{input(2, 2, 2), tensor.New("extra", tensor.Int8)}}},
		{"rows beyond max are the model's business", Request{Inputs: []*tensor.Tensor{input(3, 6, 2), tensor.New("extra", tensor.Int8)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			outs, err := s.Infer(context.Background(), tc.r)
			if err != nil {
				t.Fatal(err)
			}
			checkOutputs(t, tc.r, outs)
		})
	}
	if st := s.Stats(); st.BatchSizes[1] != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCloseDrainsQueuedWork(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			noLeaks(t)
			release := make(chan struct{})
			m := &fakeModel{started: make(chan int, 10), release: release}
			cfg := mode.cfg
			cfg.MaxQueueDelay = time.Hour
			s, err := New("drain", m, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			reqs := []Request{req(0, 8, 2), req(1, 1, 2), req(2, 1, 2)} // the first is a full batch: runs at once
			running := goInfer(context.Background(), s, reqs[0])
			<-m.started
			queued := []<-chan result{goInfer(context.Background(), s, reqs[1]), goInfer(context.Background(), s, reqs[2])}
			eventually(t, "2 queued", func() bool { return s.Stats().Queued == 2 })

			closed := make(chan error, 1)
			go func() { closed <- s.Close(context.Background()) }()
			select {
			case err := <-closed:
				t.Fatalf("Close returned %v with work in flight", err)
			default:
			}
			close(release)
			if err := <-closed; err != nil {
				t.Fatal(err)
			}
			for i, ch := range append([]<-chan result{running}, queued...) {
				r := wait(t, ch)
				if r.err != nil {
					t.Fatal(r.err)
				}
				checkOutputs(t, reqs[i], r.outs)
			}
			if _, err := s.Infer(context.Background(), req(3, 1, 2)); !errors.Is(err, ErrClosed) {
				t.Fatalf("Infer after Close: %v, want ErrClosed", err)
			}
			if err := s.Close(context.Background()); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			want := []int{8, 1, 1}
			if cfg.batching() {
				want = []int{8, 2}
			}
			if got := m.rows(); !slices.Equal(got, want) {
				t.Fatalf("batches %v, want %v", got, want)
			}
		})
	}
}

func TestCloseGivesUpAtDeadline(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			noLeaks(t)
			release := make(chan struct{})
			m := &fakeModel{started: make(chan int, 10), release: release}
			s, err := New("give-up", m, mode.cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			running := goInfer(context.Background(), s, req(0, 1, 2))
			<-m.started
			queued := goInfer(context.Background(), s, req(1, 1, 2))
			eventually(t, "queued", func() bool { return s.Stats().Queued == 1 })

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Close = %v, want DeadlineExceeded", err)
			}
			if r := wait(t, queued); !errors.Is(r.err, ErrClosed) {
				t.Fatalf("queued request: %v, want ErrClosed", r.err)
			}
			close(release) // the running request ran under its caller's context
			if r := wait(t, running); r.err != nil {
				t.Fatal(r.err)
			}
			if m.saw(1) {
				t.Fatal("queued request ran after Close gave up")
			}
		})
	}
}

func TestStats(t *testing.T) {
	m := &fakeModel{}
	s := newScheduler(t, m, Config{MaxBatchSize: 4})
	for _, rows := range []int{1, 2, 2} {
		if _, err := s.Infer(context.Background(), req(rows, rows, 2)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Infer(context.Background(), req(9, 5, 2)); !errors.Is(err, ErrInvalidRequest) {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Infer(ctx, req(9, 1, 2)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	st := s.Stats()
	want := Stats{
		Requests: 5, Failures: 1, Cancelled: 1, Executions: 3,
		BatchSizes: map[int]uint64{1: 1, 2: 2},
		QueueTime:  st.QueueTime, ComputeTime: st.ComputeTime,
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("stats\n got %+v\nwant %+v", st, want)
	}
	if st.QueueTime <= 0 || st.ComputeTime <= 0 {
		t.Fatalf("times not counted: %+v", st)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		wants []string // substrings of the error; none = valid
	}{
		{name: "zero", cfg: Config{}},
		{name: "batching", cfg: Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4, 8}, MaxQueueDelay: time.Millisecond, QueueCapacity: 10, Instances: 2}},
		{name: "max 1 is no batching", cfg: Config{MaxBatchSize: 1}},
		{
			name:  "everything wrong",
			cfg:   Config{MaxBatchSize: -1, MaxQueueDelay: -1, QueueCapacity: -1, Instances: -1},
			wants: []string{"max_batch_size", "max_queue_delay", "queue_capacity", "instances"},
		},
		{name: "preferred without batching", cfg: Config{MaxBatchSize: 1, PreferredBatchSizes: []int{1}}, wants: []string{"preferred_batch_sizes"}},
		{name: "preferred above max", cfg: Config{MaxBatchSize: 4, PreferredBatchSizes: []int{2, 5}}, wants: []string{"5 is outside"}},
		{name: "preferred zero", cfg: Config{MaxBatchSize: 4, PreferredBatchSizes: []int{0}}, wants: []string{"0 is outside"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if len(tc.wants) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want ErrInvalidConfig", err)
			}
			for _, w := range tc.wants {
				if !contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := New("x", &fakeModel{}, tc.cfg, nil); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("New: %v", err)
			}
		})
	}
	if _, err := New("x", nil, Config{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil model: %v", err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestConcurrentChurn mixes successes, cancellations and Close under -race.
func TestConcurrentChurn(t *testing.T) {
	noLeaks(t)
	m := &fakeModel{}
	s, err := New("churn", m, Config{MaxBatchSize: 8, MaxQueueDelay: 100 * time.Microsecond, Instances: 2, QueueCapacity: 32}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 50 {
				id := g*100 + i
				ctx, cancel := context.WithCancel(context.Background())
				if i%7 == 0 {
					cancel()
				}
				r := req(id, 1+i%3, 2)
				outs, err := s.Infer(ctx, r)
				cancel()
				switch {
				case err == nil:
					checkOutputs(t, r, outs)
				case errors.Is(err, context.Canceled), errors.Is(err, ErrQueueFull), errors.Is(err, ErrClosed):
				default:
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	closeNow(t, s)
	st := s.Stats()
	ok := st.Requests - st.Failures - st.Cancelled
	if st.Requests != 16*50 || st.Queued != 0 || ok == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// trivialModel returns its inputs: the cost measured is the engine's alone.
type trivialModel struct{}

func (trivialModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	return in, nil
}

// BenchmarkEngineOverhead measures, at concurrency 1, what a request costs
// through the scheduler over calling the model directly.
func BenchmarkEngineOverhead(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"nobatch", Config{}},
		{"batch-delay0", Config{MaxBatchSize: 8}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var m Model = trivialModel{}
			s, err := New("bench", m, tc.cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			ctx := context.Background()
			r := req(1, 1, 16)

			b.StopTimer()
			start := time.Now()
			for range b.N {
				if _, err := m.Infer(ctx, r.Inputs, r.Outputs); err != nil {
					b.Fatal(err)
				}
			}
			direct := time.Since(start)
			b.ReportAllocs()
			b.StartTimer()
			start = time.Now()
			for range b.N {
				if _, err := s.Infer(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			engine := time.Since(start)
			b.ReportMetric(float64(engine-direct)/float64(b.N), "added-ns/op")
		})
	}
}

// deviceModel stands for an accelerator: each execution waits about a
// millisecond whatever its batch, leaving the CPU to the callers and the
// batcher, so batching multiplies throughput.
type deviceModel struct{}

func (deviceModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	time.Sleep(time.Millisecond)
	return in, nil
}

// BenchmarkEngineParallel runs 16×GOMAXPROCS concurrent callers through one
// scheduler on a device-like model, with and without batching; rows/exec is
// the mean batch.
func BenchmarkEngineParallel(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"nobatch", Config{Instances: 2}},
		{"batch32", Config{MaxBatchSize: 32, Instances: 2}},
		{"batch32-delay100us", Config{MaxBatchSize: 32, MaxQueueDelay: 100 * time.Microsecond, Instances: 2}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := New("bench", deviceModel{}, tc.cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			b.SetParallelism(16)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := req(1, 1, 16)
				for pb.Next() {
					if _, err := s.Infer(context.Background(), r); err != nil {
						b.Error(err)
						return
					}
				}
			})
			st := s.Stats()
			if st.Executions > 0 {
				b.ReportMetric(float64(st.Requests)/float64(st.Executions), "rows/exec")
			}
		})
	}
}

// A batch policy decides when a partial batch runs; the wait bound still holds.
func TestBatchPolicy(t *testing.T) {
	var calls atomic.Int64
	policy := func(_ context.Context, q QueueState) (Decision, error) {
		calls.Add(1)
		var rows int64
		for _, r := range q.Rows {
			rows += r
		}
		if rows >= 3 {
			return Decision{Run: q.Queued}, nil
		}
		return Decision{Wait: time.Millisecond}, nil
	}
	m := &policyModel{}
	s, err := New("p", m, Config{MaxBatchSize: 8, Instances: 1, MaxQueueDelay: 200 * time.Millisecond, Policy: policy}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := tensor.FromSlice("x", tensor.FP32, []int64{1, 1}, []float32{float32(i)})
			if _, err := s.Infer(context.Background(), Request{Inputs: []*tensor.Tensor{in}}); err != nil {
				t.Error(err)
			}
		}()
		time.Sleep(2 * time.Millisecond) // arrive one by one: the policy waits for 3 rows
	}
	wg.Wait()
	if got := m.sizes(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("batches %v, want one of 3 rows chosen by the policy", got)
	}
	if calls.Load() < 2 {
		t.Fatalf("policy called %d times", calls.Load())
	}

	// A lone request still runs at the bound even if the policy always waits.
	s2, _ := New("p2", m, Config{MaxBatchSize: 8, Instances: 1, MaxQueueDelay: 20 * time.Millisecond,
		Policy: func(context.Context, QueueState) (Decision, error) { return Decision{Wait: time.Hour}, nil }}, nil)
	defer s2.Close(context.Background())
	start := time.Now()
	in := tensor.FromSlice("x", tensor.FP32, []int64{1, 1}, []float32{1})
	if _, err := s2.Infer(context.Background(), Request{Inputs: []*tensor.Tensor{in}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 15*time.Millisecond {
		t.Fatalf("ran after %v: the policy's wait was ignored", d)
	}

	// A failing policy runs the batch at once and is counted.
	s3, _ := New("p3", m, Config{MaxBatchSize: 8, Instances: 1, MaxQueueDelay: time.Second,
		Policy: func(context.Context, QueueState) (Decision, error) { return Decision{}, errors.New("guest trapped") }}, nil)
	defer s3.Close(context.Background())
	start = time.Now()
	if _, err := s3.Infer(context.Background(), Request{Inputs: []*tensor.Tensor{in}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 500*time.Millisecond || s3.Stats().PolicyErrors != 1 {
		t.Fatalf("failing policy: took %v, %d errors", d, s3.Stats().PolicyErrors)
	}
}

// policyModel echoes its input and records batch sizes.
type policyModel struct {
	mu   sync.Mutex
	seen []int64
}

func (m *policyModel) Infer(_ context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	m.mu.Lock()
	m.seen = append(m.seen, in[0].Shape[0])
	m.mu.Unlock()
	return []*tensor.Tensor{in[0].Clone()}, nil
}

func (m *policyModel) sizes() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]int64(nil), m.seen...)
}

// Close waits for a request running inline on its caller's goroutine, as
// for one a worker runs.
func TestCloseWaitsForInlineRun(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	m := &fakeModel{started: make(chan int, 1), release: release}
	s, err := New(t.Name(), m, Config{MaxBatchSize: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	running := goInfer(context.Background(), s, req(0, 1, 2))
	<-m.started
	closed := make(chan error, 1)
	go func() { closed <- s.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a request ran inline", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := s.Infer(context.Background(), req(1, 1, 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Infer after Close: %v, want ErrClosed", err)
	}
	close(release)
	if r := wait(t, running); r.err != nil {
		t.Fatal(r.err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	inline := slices.Clone(m.inline)
	m.mu.Unlock()
	if !slices.Equal(inline, []bool{true}) {
		t.Fatalf("ran inline: %v", inline)
	}
}

// bufModel records each call's input "x" (the batch tensor), with a copy
// of its bytes at the time, and returns it as output "y": as the same memory
// when pass is set, else as a copy.
type bufModel struct {
	pass bool

	mu     sync.Mutex
	inputs []*tensor.Tensor
	copies [][]byte
}

func (m *bufModel) Infer(_ context.Context, inputs []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	m.mu.Lock()
	m.inputs = append(m.inputs, inputs[0])
	m.copies = append(m.copies, slices.Clone(inputs[0].Data))
	m.mu.Unlock()
	y := inputs[0].Clone()
	if m.pass {
		y = inputs[0]
	}
	out := *y
	out.Name = "y"
	return []*tensor.Tensor{&out}, nil
}

// releaser is a bufModel that declares it keeps no inputs (InputReleaser).
type releaser struct{ *bufModel }

func (releaser) ReleasesInputs() bool { return true }

// runBatchesOf4 sends rounds × 4 one-row requests to s, 4 at a time (s must
// use batchOf4), and returns the outputs and the requests, in order.
func runBatchesOf4(t *testing.T, s *Scheduler, rounds int) ([][]*tensor.Tensor, []Request) {
	t.Helper()
	var outs [][]*tensor.Tensor
	var sent []Request
	for round := range rounds {
		var results []<-chan result
		for i := range 4 {
			r := req(round*10+i, 1, 3)
			sent = append(sent, r)
			results = append(results, goInfer(context.Background(), s, r))
		}
		for _, ch := range results {
			res := <-ch
			if res.err != nil {
				t.Fatal(res.err)
			}
			outs = append(outs, res.outs)
		}
	}
	if st := s.Stats(); st.BatchSizes[4] != uint64(rounds) {
		t.Fatalf("batch sizes %v, want %d batches of 4", st.BatchSizes, rounds)
	}
	return outs, sent
}

// batchOf4: one instance whose batches run once 4 requests wait.
var batchOf4 = Config{MaxBatchSize: 4, PreferredBatchSizes: []int{4}, MaxQueueDelay: time.Hour}

func TestBatchBuffersReusedForInputReleaser(t *testing.T) {
	noLeaks(t)
	m := &bufModel{}
	runBatchesOf4(t, newScheduler(t, releaser{m}, batchOf4), 3)
	for i, in := range m.inputs[1:] {
		if &in.Data[0] != &m.inputs[0].Data[0] {
			t.Errorf("batch %d got a new input buffer: want the worker's reused one", i+1)
		}
	}
}

func TestBatchBuffersFreshForOtherModels(t *testing.T) {
	noLeaks(t)
	m := &bufModel{} // may keep its inputs (as a guest that pins a tensor)
	runBatchesOf4(t, newScheduler(t, m, batchOf4), 3)
	for i, in := range m.inputs {
		if !bytes.Equal(in.Data, m.copies[i]) {
			t.Errorf("batch %d's input changed after the model returned", i)
		}
	}
}

// TestBatchBufferNotReusedUnderOutputs: an InputReleaser's outputs that share
// the worker's buffer keep it: later batches get another.
func TestBatchBufferNotReusedUnderOutputs(t *testing.T) {
	noLeaks(t)
	m := &bufModel{pass: true}
	outs, sent := runBatchesOf4(t, newScheduler(t, releaser{m}, batchOf4), 3)
	for i, r := range sent {
		if got, want := tensor.View[float32](outs[i][0]), tensor.View[float32](r.Inputs[0]); !slices.Equal(got, want) {
			t.Errorf("request %d's output is %v, want its input %v (overwritten by a later batch)", i, got, want)
		}
	}
}

// The engine logs under the caller's logger without naming the deployment
// again: deploy's logger carries deployment=<id>, and the engine's lines
// repeated the key with the model name as its value.
func TestLogKeysNotRepeated(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("deployment", "dep-1")
	s, err := New("model-a", trivialModel{}, Config{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(buf.String()) {
		if n := strings.Count(line, " deployment="); n != 1 {
			t.Errorf("%d deployment keys in %q", n, line)
		}
	}
	if buf.Len() == 0 {
		t.Fatal("no log lines")
	}
}
