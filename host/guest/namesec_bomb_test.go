package guest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// zzReview3NameBombs are modules of about 25 bytes whose only section is a
// custom "name" section: a function-names (1) or local-names (2)
// subsection whose count is 2^32-1. checkModule skips custom sections, but
// wazero's decodeNameSection does make(wasm.NameMap, count) (24 bytes an
// entry: 96 GiB) before reading the first entry, exactly like the vector
// bombs checkModule was written to stop.
var zzReview3NameBombs = map[string][]byte{
	"function-names": zzReview3NameSection(1, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}),
	// one function (index 0) with 2^32-1 local names
	"local-names": zzReview3NameSection(2, []byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}),
}

func zzReview3NameSection(sub byte, payload []byte) []byte {
	body := zzCat(zzName("name"), []byte{sub}, zzU(uint64(len(payload))), payload)
	return zzCat([]byte("\x00asm\x01\x00\x00\x00"), []byte{0}, zzU(uint64(len(body))), body)
}

// A 25-byte guest with a hostile name section must fail to compile (or
// compile), not take the node down with a fatal out-of-memory.
func TestNameSectionBombRefused(t *testing.T) {
	if name := os.Getenv("ZZ_REVIEW3_NAMEBOMB"); name != "" {
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: 8 << 30, Max: 8 << 30}); err != nil {
			t.Fatal(err)
		}
		rt, err := guest.NewRuntime(context.Background(), guest.Config{}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err = rt.Compile(context.Background(), zzReview3NameBombs[name])
		runtime.ReadMemStats(&after)
		fmt.Printf("ZZ-RESULT alloc_mib=%d abi=%v err=%v\n", (after.TotalAlloc-before.TotalAlloc)>>20, errors.Is(err, guest.ErrABI), err)
		return
	}
	for name, wasm := range zzReview3NameBombs {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestNameSectionBombRefused$", "-test.count=1")
			cmd.Env = append(os.Environ(), "ZZ_REVIEW3_NAMEBOMB="+name)
			out, err := cmd.CombinedOutput()
			line := string(out)
			if i := strings.Index(line, "ZZ-RESULT"); i >= 0 {
				line = strings.SplitN(line[i:], "\n", 2)[0]
			} else if i := strings.Index(line, "fatal error"); i >= 0 {
				line = strings.SplitN(line[i:], "\n", 2)[0]
			} else {
				line = firstLine(line)
			}
			t.Logf("%s count 2^32-1 (%d-byte module): %s", name, len(wasm), line)
			if err != nil {
				t.Fatalf("compiling the module killed the process (%v): %s", err, line)
			}
			var mib int
			fmt.Sscanf(line, "ZZ-RESULT alloc_mib=%d", &mib)
			if mib > 64 {
				t.Fatalf("compile allocated %d MiB for a %d-byte module", mib, len(wasm))
			}
		})
	}
}
