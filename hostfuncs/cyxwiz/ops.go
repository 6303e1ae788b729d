package cyxwiz

import (
	"fmt"
	"math"
	"slices"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// The tensor operations behind the host functions. Each reads its inputs
// without changing them (host tensors are immutable once created, so a
// result may share an input's data, as reshape does) and allocates its
// result through the session, which charges it against Limits.MaxBytes
// before the memory is taken.

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errInvalid}, args...)...)
}

// floats returns x's elements as float32: a view for FP32, a copy for
// UINT8 (pixels), an error for any other type. The copy is working memory:
// call refund when done with it.
func (s *Session) floats(x *tensor.Tensor) (vals []float32, refund func(), err error) {
	switch x.DType {
	case tensor.FP32:
		return tensor.View[float32](x), func() {}, nil
	case tensor.Uint8:
		if refund, err = s.scratch(int64(len(x.Data)) * 4); err != nil {
			return nil, nil, err
		}
		out := make([]float32, len(x.Data))
		for i, v := range x.Data {
			out[i] = float32(v)
		}
		return out, refund, nil
	}
	return nil, nil, invalid("tensor %s is %v, want FP32 or UINT8", quote(x.Name), x.DType)
}

func fp32(x *tensor.Tensor) ([]float32, error) {
	if x.DType != tensor.FP32 {
		return nil, invalid("tensor %s is %v, want FP32", quote(x.Name), x.DType)
	}
	return tensor.View[float32](x), nil
}

func normAxis(axis, rank int) (int, error) {
	if axis < 0 {
		axis += rank
	}
	if axis < 0 || axis >= rank {
		return 0, invalid("axis %d out of range for rank %d", axis, rank)
	}
	return axis, nil
}

// split returns the products of the dimensions before and after axis.
func split(shape []int64, axis int) (outer, n, inner int) {
	outer, inner = 1, 1
	for _, d := range shape[:axis] {
		outer *= int(d)
	}
	for _, d := range shape[axis+1:] {
		inner *= int(d)
	}
	return outer, int(shape[axis]), inner
}

// affine: y = x*scale + bias, elementwise.
func (s *Session) affine(x *tensor.Tensor, scale, bias float32) (*tensor.Tensor, error) {
	in, refundIn, err := s.floats(x)
	if err != nil {
		return nil, err
	}
	defer refundIn()
	y, err := s.alloc(x.Name, tensor.FP32, x.Shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	for i, v := range in {
		// Rounded after the product as NumPy rounds it: arm64 fused the
		// two into one multiply-add, off by a bit from every other node.
		out[i] = float32(v*scale) + bias
	}
	return y, nil
}

// normalize: y = (x*scale - mean[c]) / std[c], c the index along axis.
func (s *Session) normalize(x *tensor.Tensor, scale float32, mean, std []float32, axis int) (*tensor.Tensor, error) {
	axis, err := normAxis(axis, len(x.Shape))
	if err != nil {
		return nil, err
	}
	outer, n, inner := split(x.Shape, axis)
	if len(mean) != n || len(std) != n {
		return nil, invalid("%d means and %d stds for %d channels", len(mean), len(std), n)
	}
	in, refundIn, err := s.floats(x)
	if err != nil {
		return nil, err
	}
	defer refundIn()
	y, err := s.alloc(x.Name, tensor.FP32, x.Shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	for c, v := range std {
		if v == 0 {
			return nil, invalid("std[%d] is 0", c)
		}
	}
	i := 0
	for range outer {
		if err := s.stopped(); err != nil {
			return nil, err
		}
		for c := range n {
			// A division, as NumPy and torchvision compute it: times a
			// rounded 1/std differed in the last bit for a third of the
			// pixels. The conversion rounds x·scale, never fused with
			// the subtraction (arm64), as NumPy rounds it.
			m, sd := mean[c], std[c]
			for _, v := range in[i : i+inner] {
				out[i] = (float32(v*scale) - m) / sd
				i++
			}
		}
	}
	return y, nil
}

func (s *Session) softmax(x *tensor.Tensor, axis int) (*tensor.Tensor, error) {
	in, err := fp32(x)
	if err != nil {
		return nil, err
	}
	axis, err = normAxis(axis, len(x.Shape))
	if err != nil {
		return nil, err
	}
	outer, n, inner := split(x.Shape, axis)
	y, err := s.alloc(x.Name, tensor.FP32, x.Shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	for o := range outer {
		for k := range inner {
			// The deadline within a row too: one row of 64M elements
			// took a second.
			if err := s.tick(1); err != nil {
				return nil, err
			}
			base := o*n*inner + k
			m := float32(math.Inf(-1))
			for j := range n {
				m = max(m, in[base+j*inner])
			}
			var sum float64
			for j := range n {
				if err := s.tick(1); err != nil {
					return nil, err
				}
				e := math.Exp(float64(in[base+j*inner] - m))
				out[base+j*inner] = float32(e)
				sum += e
			}
			for j := range n {
				out[base+j*inner] = float32(float64(out[base+j*inner]) / sum)
			}
		}
	}
	return y, nil
}

// topk returns the k largest values along the last axis, largest first
// (NaN counts as the largest, as in PyTorch; ties: lower index first), and
// their INT64 indices. It keeps the best k of a row in a heap: n log k work,
// with the deadline checked as it goes.
func (s *Session) topk(x *tensor.Tensor, k int) (vals, idx *tensor.Tensor, err error) {
	in, err := fp32(x)
	if err != nil {
		return nil, nil, err
	}
	if len(x.Shape) == 0 {
		return nil, nil, invalid("topk of a scalar")
	}
	n := int(x.Shape[len(x.Shape)-1])
	if k < 1 || k > n {
		return nil, nil, invalid("k=%d for a last dimension of %d", k, n)
	}
	// The results are named after x; like every name, they must fit the
	// tensor list (a host tensor's name, a model output's, may not).
	if len(x.Name)+len(":indices") > abi.MaxNameLen {
		return nil, nil, invalid("a tensor named with %d bytes: its results' names (+\":values\", +\":indices\") would be over %d", len(x.Name), abi.MaxNameLen)
	}
	shape := slices.Clone(x.Shape)
	shape[len(shape)-1] = int64(k)
	if vals, err = s.alloc(x.Name+":values", tensor.FP32, shape...); err != nil {
		return nil, nil, err
	}
	if idx, err = s.alloc(x.Name+":indices", tensor.Int64, shape...); err != nil {
		return nil, nil, err
	}
	if len(in) == 0 {
		return vals, idx, nil
	}
	vo, io := tensor.View[float32](vals), tensor.View[int64](idx)
	refund, err := s.scratch(int64(k) * 8)
	if err != nil {
		return nil, nil, err
	}
	defer refund()
	h := make(topHeap, 0, k)
	for r := 0; r*n < len(in); r++ {
		row := in[r*n : (r+1)*n]
		h = h[:0]
		for i := range row {
			if i&0xffff == 0 {
				if err := s.stopped(); err != nil {
					return nil, nil, err
				}
			}
			switch {
			case len(h) < k:
				h.push(row, i)
			case before(row, i, h[0]):
				h[0] = i
				h.down(row, 0)
			}
		}
		// Pop the worst first: the row comes out best first from the end.
		for j := k - 1; j >= 0; j-- {
			best := h.pop(row)
			vo[r*k+j], io[r*k+j] = row[best], int64(best)
		}
	}
	return vals, idx, nil
}

// before says whether element i of row ranks above element j: larger value
// first, NaN above everything, lower index first among equals.
func before(row []float32, i, j int) bool {
	a, b := row[i], row[j]
	an, bn := a != a, b != b
	switch {
	case an || bn:
		if an && bn {
			return i < j
		}
		return an
	case a != b:
		return a > b
	}
	return i < j
}

// topHeap holds indices into a row with the lowest-ranked at the root.
type topHeap []int

func (h *topHeap) push(row []float32, i int) {
	*h = append(*h, i)
	c := len(*h) - 1
	for c > 0 {
		p := (c - 1) / 2
		if !before(row, (*h)[p], (*h)[c]) {
			break
		}
		(*h)[p], (*h)[c] = (*h)[c], (*h)[p]
		c = p
	}
}

func (h topHeap) down(row []float32, p int) {
	for {
		c := 2*p + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && before(row, h[c], h[c+1]) {
			c++ // the lower-ranked child
		}
		if !before(row, h[p], h[c]) {
			return
		}
		h[p], h[c] = h[c], h[p]
		p = c
	}
}

func (h *topHeap) pop(row []float32) int {
	old := *h
	top := old[0]
	old[0] = old[len(old)-1]
	*h = old[:len(old)-1]
	h.down(row, 0)
	return top
}

// resize scales the two spatial dimensions bilinearly with half-pixel
// centres (OpenCV's INTER_LINEAR, no antialiasing). layout is
// abi.LayoutNCHW (rank 4, H and W last) or abi.LayoutHWC (rank 3). The
// result is FP32.
func (s *Session) resize(x *tensor.Tensor, oh, ow int, layout int) (*tensor.Tensor, error) {
	var planes, h, w, ch int // ch: interleaved channels
	switch {
	case layout == 0 && len(x.Shape) == 4:
		planes, ch, h, w = int(x.Shape[0]*x.Shape[1]), 1, int(x.Shape[2]), int(x.Shape[3])
	case layout == 1 && len(x.Shape) == 3:
		planes, h, w, ch = 1, int(x.Shape[0]), int(x.Shape[1]), int(x.Shape[2])
	default:
		return nil, invalid("resize layout %d of shape %v (want NCHW rank 4 or HWC rank 3)", layout, x.Shape)
	}
	if oh < 1 || ow < 1 || h < 1 || w < 1 {
		return nil, invalid("resize %dx%d to %dx%d", h, w, oh, ow)
	}
	// Pixels are read as they are, never copied to FP32 first: the copy,
	// 4 bytes a pixel, was charged, and a decoded 24 MP photo (72 MiB)
	// could not be resized under the 256 MiB limit.
	if x.DType != tensor.FP32 && x.DType != tensor.Uint8 {
		return nil, invalid("tensor %s is %v, want FP32 or UINT8", quote(x.Name), x.DType)
	}
	shape := slices.Clone(x.Shape)
	if layout == 0 {
		shape[2], shape[3] = int64(oh), int64(ow)
	} else {
		shape[0], shape[1] = int64(oh), int64(ow)
	}
	y, err := s.alloc(x.Name, tensor.FP32, shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	if len(out) == 0 {
		return y, nil
	}
	refund, err := s.scratch(20 * (int64(oh) + int64(ow))) // axisWeights: two ints and a float32 each
	if err != nil {
		return nil, err
	}
	defer refund()
	g := grid{planes: planes, h: h, w: w, ch: ch, oh: oh, ow: ow}
	g.x0, g.x1, g.wx = axisWeights(w, ow)
	g.y0, g.y1, g.wy = axisWeights(h, oh)
	if x.DType == tensor.Uint8 {
		err = bilinear(s, out, x.Data, &g)
	} else {
		err = bilinear(s, out, tensor.View[float32](x), &g)
	}
	if err != nil {
		return nil, err
	}
	return y, nil
}

// grid is a resize's geometry: planes of h×w pixels of ch interleaved
// channels to oh×ow, and the axisWeights of both axes.
type grid struct {
	planes, h, w, ch, oh, ow int
	x0, x1, y0, y1           []int
	wx, wy                   []float32
}

// bilinear fills out with the bilinear resize of in by g, each element read
// as float32 (exact for UINT8).
func bilinear[E uint8 | float32](s *Session, out []float32, in []E, g *grid) error {
	h, w, ch := g.h, g.w, g.ch
	o := 0
	for p := range g.planes {
		src := in[p*h*w*ch : (p+1)*h*w*ch]
		for oy := range g.oh {
			if err := s.stopped(); err != nil {
				return err
			}
			r0, r1, fy := src[g.y0[oy]*w*ch:], src[g.y1[oy]*w*ch:], g.wy[oy]
			for ox := range g.ow {
				a, b, fx := g.x0[ox]*ch, g.x1[ox]*ch, g.wx[ox]
				for c := range ch {
					// Each product rounded, never fused with its sum
					// (arm64, amd64 v3): every node computes the same bits.
					ta, tb := float32(r0[a+c]), float32(r0[b+c])
					ba, bb := float32(r1[a+c]), float32(r1[b+c])
					top := ta + float32((tb-ta)*fx)
					bot := ba + float32((bb-ba)*fx)
					out[o] = top + float32((bot-top)*fy)
					o++
				}
			}
		}
	}
	return nil
}

// axisWeights maps each of n output positions to two input positions and
// the weight of the second.
func axisWeights(in, n int) (lo, hi []int, wt []float32) {
	lo, hi, wt = make([]int, n), make([]int, n), make([]float32, n)
	scale := float64(in) / float64(n)
	for i := range n {
		f := float64((float64(i)+0.5)*scale) - 0.5 // rounded, not fused
		if f < 0 {
			f = 0
		}
		l := int(f)
		if l >= in-1 {
			lo[i], hi[i] = in-1, in-1
			continue
		}
		lo[i], hi[i], wt[i] = l, l+1, float32(f-float64(l))
	}
	return lo, hi, wt
}

// matmul multiplies a [..., K] (leading dimensions flattened to M rows) by
// b [K, N].
func (s *Session) matmul(a, b *tensor.Tensor) (*tensor.Tensor, error) {
	av, err := fp32(a)
	if err != nil {
		return nil, err
	}
	bv, err := fp32(b)
	if err != nil {
		return nil, err
	}
	if len(a.Shape) < 1 || len(b.Shape) != 2 || a.Shape[len(a.Shape)-1] != b.Shape[0] {
		return nil, invalid("matmul of %v by %v", a.Shape, b.Shape)
	}
	k, n := int(b.Shape[0]), int(b.Shape[1])
	shape := slices.Clone(a.Shape)
	shape[len(shape)-1] = int64(n)
	y, err := s.alloc(a.Name, tensor.FP32, shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	if k == 0 {
		return y, nil
	}
	for r := 0; r*k < len(av); r++ {
		if err := s.stopped(); err != nil {
			return nil, err
		}
		orow := out[r*n : (r+1)*n]
		for j, v := range av[r*k : (r+1)*k] {
			for c, w := range bv[j*n : (j+1)*n] {
				orow[c] += float32(v * w) // rounded, not fused (arm64)
			}
		}
	}
	return y, nil
}

// add: a + b, where b has a's shape or a's trailing dimensions (repeated).
func (s *Session) add(a, b *tensor.Tensor) (*tensor.Tensor, error) {
	av, err := fp32(a)
	if err != nil {
		return nil, err
	}
	bv, err := fp32(b)
	if err != nil {
		return nil, err
	}
	if len(b.Shape) > len(a.Shape) || !slices.Equal(b.Shape, a.Shape[len(a.Shape)-len(b.Shape):]) {
		return nil, invalid("add %v to %v", b.Shape, a.Shape)
	}
	y, err := s.alloc(a.Name, tensor.FP32, a.Shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	if len(bv) == 0 {
		return y, nil
	}
	for i, v := range av {
		out[i] = v + bv[i%len(bv)]
	}
	return y, nil
}

func (s *Session) relu(x *tensor.Tensor) (*tensor.Tensor, error) {
	in, err := fp32(x)
	if err != nil {
		return nil, err
	}
	y, err := s.alloc(x.Name, tensor.FP32, x.Shape...)
	if err != nil {
		return nil, err
	}
	out := tensor.View[float32](y)
	for i, v := range in {
		out[i] = max(v, 0)
	}
	return y, nil
}

// transpose permutes the dimensions of a fixed-width tensor.
func (s *Session) transpose(x *tensor.Tensor, perm []int) (*tensor.Tensor, error) {
	rank := len(x.Shape)
	if x.DType == tensor.Bytes || len(perm) != rank {
		return nil, invalid("transpose %v of %v by %v", x.DType, x.Shape, perm)
	}
	seen := make([]bool, rank)
	shape := make([]int64, rank)
	for i, p := range perm {
		if p < 0 || p >= rank || seen[p] {
			return nil, invalid("bad permutation %v", perm)
		}
		seen[p] = true
		shape[i] = x.Shape[p]
	}
	y, err := s.alloc(x.Name, x.DType, shape...)
	if err != nil {
		return nil, err
	}
	// Input strides (in elements) in output dimension order.
	stride := make([]int, rank)
	st := 1
	for i := rank - 1; i >= 0; i-- {
		stride[i] = st
		st *= int(x.Shape[i])
	}
	ostride := make([]int, rank)
	for i, p := range perm {
		ostride[i] = stride[p]
	}
	if rank == 0 || tensor.NumElements(shape) == 0 {
		copy(y.Data, x.Data)
		return y, nil
	}
	// Strided reads miss the cache: 256 MiB took 1.6 s, past any
	// deadline, without the checks permute makes as it goes (tick).
	switch x.DType.Size() {
	case 1:
		err = permute(tensor.View[uint8](y), tensor.View[uint8](x), shape, ostride, s.tick)
	case 2:
		err = permute(tensor.View[uint16](y), tensor.View[uint16](x), shape, ostride, s.tick)
	case 4:
		err = permute(tensor.View[uint32](y), tensor.View[uint32](x), shape, ostride, s.tick)
	default:
		err = permute(tensor.View[uint64](y), tensor.View[uint64](x), shape, ostride, s.tick)
	}
	if err != nil {
		return nil, err
	}
	return y, nil
}

// cast converts between the numeric fixed-width types (not FP16/BF16),
// through float64: INT64/UINT64 beyond 2^53 lose precision, float to
// integer truncates toward zero.
func (s *Session) cast(x *tensor.Tensor, dt tensor.DType) (*tensor.Tensor, error) {
	if !castable(x.DType) || !castable(dt) {
		return nil, invalid("cast %v to %v", x.DType, dt)
	}
	y, err := s.alloc(x.Name, dt, x.Shape...)
	if err != nil {
		return nil, err
	}
	// Every loop checks the deadline as it goes (tick): a cast of a large
	// input took most of a second.
	n := int(tensor.NumElements(x.Shape))
	switch {
	case integral(x.DType) && integral(dt):
		// Integers to integers wrap (two's complement), as NumPy's astype
		// and ONNX Cast do: through float64 they lost precision past 2^53
		// and came out as whatever this CPU makes of an out-of-range float.
		for i := range n {
			if err := s.tick(1); err != nil {
				return nil, err
			}
			setI64(y, i, getI64(x, i))
		}
	case integral(x.DType) && dt == tensor.FP32:
		// Rounded once, not twice through float64.
		out := tensor.View[float32](y)
		for i := range n {
			if err := s.tick(1); err != nil {
				return nil, err
			}
			if x.DType == tensor.Uint64 {
				out[i] = float32(tensor.View[uint64](x)[i])
			} else {
				out[i] = float32(getI64(x, i))
			}
		}
	default:
		for i := range n {
			if err := s.tick(1); err != nil {
				return nil, err
			}
			setF64(y, i, getF64(x, i))
		}
	}
	return y, nil
}

// integral reports whether d holds integers (BOOL included).
func integral(d tensor.DType) bool { return d != tensor.FP32 && d != tensor.FP64 }

// getI64 is element i of an integer tensor; a UINT64 above MaxInt64 comes
// back as its two's-complement bits, which setI64 turns back.
func getI64(t *tensor.Tensor, i int) int64 {
	switch t.DType {
	case tensor.Bool, tensor.Uint8:
		return int64(t.Data[i])
	case tensor.Int8:
		return int64(int8(t.Data[i]))
	case tensor.Uint16:
		return int64(tensor.View[uint16](t)[i])
	case tensor.Int16:
		return int64(tensor.View[int16](t)[i])
	case tensor.Uint32:
		return int64(tensor.View[uint32](t)[i])
	case tensor.Int32:
		return int64(tensor.View[int32](t)[i])
	case tensor.Uint64:
		return int64(tensor.View[uint64](t)[i])
	case tensor.Int64:
		return tensor.View[int64](t)[i]
	}
	return 0
}

// setI64 stores v into element i of an integer tensor, keeping its low
// bits (Go's integer conversions wrap); BOOL is v != 0.
func setI64(t *tensor.Tensor, i int, v int64) {
	switch t.DType {
	case tensor.Bool:
		t.Data[i] = 0
		if v != 0 {
			t.Data[i] = 1
		}
	case tensor.Uint8:
		t.Data[i] = uint8(v)
	case tensor.Int8:
		t.Data[i] = byte(int8(v))
	case tensor.Uint16:
		tensor.View[uint16](t)[i] = uint16(v)
	case tensor.Int16:
		tensor.View[int16](t)[i] = int16(v)
	case tensor.Uint32:
		tensor.View[uint32](t)[i] = uint32(v)
	case tensor.Int32:
		tensor.View[int32](t)[i] = int32(v)
	case tensor.Uint64:
		tensor.View[uint64](t)[i] = uint64(v)
	case tensor.Int64:
		tensor.View[int64](t)[i] = v
	}
}

// saturate truncates v toward zero and clamps it to [lo, hi], NaN to 0:
// Go leaves an out-of-range float-to-integer conversion to the CPU (amd64
// and arm64 answer differently), and a node's answer must not depend on
// its CPU.
func saturate(v, lo, hi float64) float64 {
	switch {
	case v != v:
		return 0
	case v <= lo:
		return lo
	case v >= hi:
		return hi
	}
	return math.Trunc(v)
}

func castable(d tensor.DType) bool {
	return d.Valid() && d != tensor.Bytes && d != tensor.FP16 && d != tensor.BF16
}

func getF64(t *tensor.Tensor, i int) float64 {
	switch t.DType {
	case tensor.FP32:
		return float64(tensor.View[float32](t)[i])
	case tensor.FP64:
		return tensor.View[float64](t)[i]
	case tensor.Uint64:
		return float64(tensor.View[uint64](t)[i])
	}
	return float64(getI64(t, i))
}

func setF64(t *tensor.Tensor, i int, v float64) {
	switch t.DType {
	case tensor.Bool:
		t.Data[i] = 0
		if v != 0 {
			t.Data[i] = 1
		}
	case tensor.Uint8:
		t.Data[i] = uint8(saturate(v, 0, math.MaxUint8))
	case tensor.Int8:
		t.Data[i] = byte(int8(saturate(v, math.MinInt8, math.MaxInt8)))
	case tensor.Uint16:
		tensor.View[uint16](t)[i] = uint16(saturate(v, 0, math.MaxUint16))
	case tensor.Int16:
		tensor.View[int16](t)[i] = int16(saturate(v, math.MinInt16, math.MaxInt16))
	case tensor.Uint32:
		tensor.View[uint32](t)[i] = uint32(saturate(v, 0, math.MaxUint32))
	case tensor.Int32:
		tensor.View[int32](t)[i] = int32(saturate(v, math.MinInt32, math.MaxInt32))
	case tensor.Uint64:
		// 2^64 is the first float64 past the range.
		if v >= 1<<64 {
			tensor.View[uint64](t)[i] = math.MaxUint64
		} else {
			tensor.View[uint64](t)[i] = uint64(saturate(v, 0, 1<<64))
		}
	case tensor.Int64:
		if v >= 1<<63 {
			tensor.View[int64](t)[i] = math.MaxInt64
		} else {
			tensor.View[int64](t)[i] = int64(saturate(v, math.MinInt64, 1<<63))
		}
	case tensor.FP32:
		tensor.View[float32](t)[i] = float32(v)
	case tensor.FP64:
		tensor.View[float64](t)[i] = v
	}
}

// reshape gives x a new shape with the same element count; one dimension
// may be -1 (inferred). The result shares x's data.
func reshape(x *tensor.Tensor, shape []int64) (*tensor.Tensor, error) {
	shape = slices.Clone(shape)
	infer := -1
	known := int64(1)
	for i, d := range shape {
		switch {
		case d == -1 && infer < 0:
			infer = i
		case d < 0:
			return nil, invalid("reshape to %v", shape)
		default:
			if d != 0 && known > math.MaxInt64/d {
				return nil, invalid("reshape to %v overflows", shape)
			}
			known *= d
		}
	}
	n := x.Len()
	if infer >= 0 {
		if known == 0 || n%known != 0 {
			return nil, invalid("reshape %v to %v", x.Shape, shape)
		}
		shape[infer] = n / known
	} else if known != n {
		return nil, invalid("reshape %v (%d elements) to %v", x.Shape, n, shape)
	}
	return &tensor.Tensor{Name: x.Name, DType: x.DType, Shape: shape, Data: x.Data, Strings: x.Strings}, nil
}

func (s *Session) concat(parts []*tensor.Tensor) (*tensor.Tensor, error) {
	var n int64
	for _, p := range parts {
		n += size(p)
	}
	if err := s.charge(n); err != nil {
		return nil, err
	}
	name := ""
	if len(parts) > 0 {
		name = parts[0].Name
	}
	y, err := tensor.Concat(name, parts)
	if err != nil {
		return nil, invalid("%v", err)
	}
	// Empty parts hold nothing, but their rows add up: [2^10, 0, 2^10]
	// twice spans more than either.
	if err := s.checkShape(y.Shape); err != nil {
		return nil, err
	}
	return y, nil
}

// permute fills out (of shape) from in, where output index i has input
// offset sum(i[k]*ostride[k]); the last dimension is the inner loop. It
// reports its work to tick every 2^16 elements at most and stops at tick's
// error.
func permute[E uint8 | uint16 | uint32 | uint64](out, in []E, shape []int64, ostride []int, tick func(int) error) error {
	rank := len(shape)
	inner, step := int(shape[rank-1]), ostride[rank-1]
	idx := make([]int, rank-1)
	base := 0
	for o := 0; o < len(out); o += inner {
		src := base
		for lo := 0; lo < inner; lo += 1 << 16 {
			hi := min(inner, lo+1<<16)
			if err := tick(hi - lo); err != nil {
				return err
			}
			for j := range out[o+lo : o+hi] {
				out[o+lo+j] = in[src]
				src += step
			}
		}
		for k := rank - 2; k >= 0; k-- {
			idx[k]++
			base += ostride[k]
			if idx[k] < int(shape[k]) {
				break
			}
			base -= idx[k] * ostride[k]
			idx[k] = 0
		}
	}
	return nil
}
