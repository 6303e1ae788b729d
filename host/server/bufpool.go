package server

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// tensorPool is the gRPC buffer pool of the node: power-of-two classes from
// 256 B to 64 MiB, each a sync.Pool, and buffers handed out as they were
// left, not zeroed.
//
// gRPC's default pool zeroes the whole capacity of every buffer it hands
// out: materialising a 110 KB tensor request takes a 1 MiB buffer from it
// and clears all of it, which measured ~10 % of the node's CPU at c=16 on
// the ppocr benchmark. Every user of these buffers (the HTTP/2 framer
// reading a frame, the codec copying a message) writes each byte before it
// reads it, so the zeroing protects nothing here; gRPC itself keeps an
// internal "dirty" pool for the same reason.
type tensorPool struct {
	classes [maxClass + 1]sync.Pool
}

const (
	minClass = 8  // 256 B
	maxClass = 26 // 64 MiB; larger buffers are plain allocations
)

// buffers is the node's one pool, shared by its gRPC server and codec.
var buffers = &tensorPool{}

// class is the smallest class whose buffers hold n bytes.
func class(n int) int {
	if n <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(n - 1))
}

// Get returns a buffer of length n whose contents are unspecified.
func (p *tensorPool) Get(n int) *[]byte {
	c := class(n)
	if c > maxClass {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<c)
	return &b
}

// Put returns a buffer from Get. Buffers whose capacity is not a class
// size (from elsewhere, or too large) are left to the garbage collector.
func (p *tensorPool) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minClass || c > 1<<maxClass || c&(c-1) != 0 {
		return
	}
	*b = (*b)[:0]
	p.classes[bits.Len(uint(c))-1].Put(b)
}

var _ mem.BufferPool = (*tensorPool)(nil)
