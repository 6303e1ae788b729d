// Command hostile misbehaves on purpose, as the BYTES input "mode" (or
// else its config "mode") says, to test
// that a failing guest only fails its own call and instance.
package main

import (
	"os"
	"strings"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

var (
	keep  [][]byte
	calls int64
)

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	mode, _ := sdk.Config("mode")
	for _, t := range in {
		if t.Name() == "mode" {
			if s, err := t.Strings(); err == nil && len(s) == 1 {
				mode = string(s[0])
			}
		}
	}
	switch mode {
	case "loop":
		for {
		}
	case "bomb":
		for {
			keep = append(keep, make([]byte, 1<<20))
		}
	case "clock": // what a timing attack would read
		var t [16]int64
		for i := range t {
			t[i] = time.Now().UnixNano()
			for range 20000 { // ~tens of µs of work between reads
				keep = keep[:0]
			}
		}
		return []*sdk.Tensor{sdk.Int64s("t", []int64{int64(len(t))}, t[:])}, nil
	case "grow": // 16 MiB, once: fine under a generous limit
		keep = append(keep[:0], make([]byte, 16<<20))
	case "panic":
		panic("hostile: boom")
	case "nilderef":
		var p *int
		*p = 1
	case "exit":
		os.Exit(3)
	case "hostbomb":
		x := sdk.Float32s("x", []int64{1 << 18}, make([]float32, 1<<18))
		for {
			if _, err := sdk.Affine(x, 1, 1); err != nil {
				return nil, err
			}
		}
	case "dupout": // one 1 MiB host tensor, listed 100 times
		y, err := sdk.Affine(sdk.Float32s("x", []int64{1 << 18}, make([]float32, 1<<18)), 1, 0)
		if err != nil {
			return nil, err
		}
		out := make([]*sdk.Tensor, 100)
		for i := range out {
			out[i] = y
		}
		return out, nil
	case "relu": // a host op on the second input; the result keeps its name
		y, err := sdk.Relu(in[1])
		if err != nil {
			return nil, err
		}
		return []*sdk.Tensor{y}, nil
	case "count": // how many calls this instance has served
		calls++
		return []*sdk.Tensor{sdk.Int64s("n", []int64{1}, []int64{calls})}, nil
	case "spam":
		line := strings.Repeat("s", 1023) + "\n"
		for range 1024 {
			os.Stderr.WriteString(line)
		}
	case "fail":
		return nil, os.ErrInvalid
	case "infer", "infer-other":
		model := ""
		if mode == "infer-other" {
			model = "other"
		}
		return sdk.Infer(model, in[1])
	}
	return in, nil
}
