package guest

import (
	"io/fs"
	"syscall"
	"time"
)

// accessTime is when fi's file was last read, as far as the file system
// records it (relatime: at least once a day); zero when unknown.
func accessTime(fi fs.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(int64(st.Atim.Sec), int64(st.Atim.Nsec))
	}
	return time.Time{}
}
