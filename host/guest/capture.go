package guest

import "sync"

// capture keeps the first max bytes a guest writes to stdout or stderr
// during one call and counts the rest; take empties it after the call.
type capture struct {
	mu      sync.Mutex
	buf     []byte
	max     int
	dropped int
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(len(p), c.max-len(c.buf))
	c.buf = append(c.buf, p[:n]...)
	c.dropped += len(p) - n
	return len(p), nil
}

// take returns what was written since the last take and how many bytes
// were dropped.
func (c *capture) take() (string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, d := string(c.buf), c.dropped
	c.buf, c.dropped = c.buf[:0], 0
	return s, d
}
