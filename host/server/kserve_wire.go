package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// The ModelInfer hot path decodes requests without copying their tensors
// twice. The standard codec joins the message's HTTP/2 frames into one
// buffer and proto.Unmarshal then copies every raw_input_contents entry out
// of it again. Here the frames are copied once into a pooled buffer, the
// raw_input_contents entries alias that buffer, and the buffer goes back to
// the pool when the call is over. Every other field is decoded by
// proto.Unmarshal as before, so validation (UTF-8, wire types) is unchanged.

// rawInputField is ModelInferRequest.raw_input_contents.
const rawInputField protowire.Number = 7

// maxEntries bounds each of a request's inputs, requested outputs and
// raw_input_contents. An entry takes two bytes on the wire and up to a
// hundred and fifty in memory: a 64 MiB request of 33 million empty inputs
// made the node allocate 5 GB to decode it. No model has thousands of
// inputs.
const maxEntries = 1 << 14

// The nested repeated fields whose entries cost far more decoded than on
// the wire are bounded per request too (checkNested), before decoding: a
// 64 MiB request of empty bytes_contents decoded to ~1.3 GB, one of
// parameters to ~1.1 GB, one shape of 33 million dimensions to 256 MB.
const (
	maxBytesElements = 1 << 20 // bytes_contents entries, all inputs together
	maxParameters    = 1 << 12 // parameters entries, request, inputs and outputs together
	maxRank          = 64      // dimensions of one input's shape
)

// entryFields names the repeated fields of ModelInferRequest that
// maxEntries bounds.
var entryFields = map[protowire.Number]string{5: "inputs", 6: "outputs", rawInputField: "raw_input_contents"}

// inferRequest is what the node's ModelInfer handler decodes into: the
// request, and the pooled buffer its raw_input_contents alias (nil when
// they do not).
type inferRequest struct {
	req inference.ModelInferRequest
	buf *[]byte
	// size is what the request holds in flight: its encoded message,
	// what its typed contents decode to (nestedCount.decoded) and its raw
	// BYTES inputs split (rawStrings).
	size int64
	// bad is why the message did not decode: the handler answers it as
	// InvalidArgument (a codec error is always Internal in grpc-go).
	bad error
}

// wireCodec is the server's codec: the standard proto codec, except for
// *inferRequest.
type wireCodec struct {
	proto encoding.CodecV2
	pool  mem.BufferPool
}

func newWireCodec(pool mem.BufferPool) wireCodec {
	return wireCodec{proto: encoding.GetCodecV2("proto"), pool: pool}
}

func (wireCodec) Name() string { return "proto" }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*inferReply)
	if !ok {
		return c.proto.Marshal(v)
	}
	// The response is bytes of its own once marshalled: only then may the
	// request's buffer, which its raw outputs can share, be reused.
	out, err := c.proto.Marshal(r.resp)
	r.req.release(c.pool, nil)
	return out, err
}

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if u, ok := v.(*undecoded); ok {
		if err := c.Unmarshal(data, u.msg); err != nil {
			u.bad = err
		}
		return nil
	}
	r, ok := v.(*inferRequest)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	buf := c.pool.Get(data.Len())
	data.CopyTo(*buf)
	decoded, err := decodeInferRequest(*buf, &r.req)
	if err != nil {
		c.pool.Put(buf)
		r.req.Reset()
		r.bad = err
		return nil
	}
	r.buf = buf
	r.size = int64(data.Len()) + decoded + rawStrings(&r.req)
	return nil
}

// rawStrings bounds what the raw BYTES inputs of req take split into
// elements (fromRaw): a slice header per element, six times the four
// bytes of its length prefix.
func rawStrings(req *inference.ModelInferRequest) int64 {
	var n int64
	for i, in := range req.Inputs {
		if i < len(req.RawInputContents) && in.Datatype == "BYTES" {
			n += int64(len(req.RawInputContents[i])/4) * 24
		}
	}
	return n
}

// decodeInferRequest decodes b into req with raw_input_contents aliasing b.
// The other fields are decoded by proto.Unmarshal, in runs of consecutive
// fields (usually one run: marshallers write field 7 last). It returns the
// bytes that the inputs' typed contents take decoded, as nestedCount.decoded.
func decodeInferRequest(b []byte, req *inference.ModelInferRequest) (decoded int64, err error) {
	merge := proto.UnmarshalOptions{Merge: true}
	start := 0 // of the pending run of other fields
	var entries [rawInputField + 1]int
	var nested nestedCount
	for pos := 0; pos < len(b); {
		num, typ, n := protowire.ConsumeTag(b[pos:])
		if n < 0 {
			return 0, fmt.Errorf("decode ModelInferRequest: %w", protowire.ParseError(n))
		}
		if name, ok := entryFields[num]; ok && typ == protowire.BytesType {
			if entries[num]++; entries[num] > maxEntries {
				return 0, fmt.Errorf("decode ModelInferRequest: more than %d %s", maxEntries, name)
			}
		}
		if typ == protowire.BytesType && num >= 4 && num <= 6 {
			v, m := protowire.ConsumeBytes(b[pos+n:])
			if m < 0 {
				return 0, fmt.Errorf("decode ModelInferRequest: field %d: %w", num, protowire.ParseError(m))
			}
			if err := nested.check(num, v, entries[num]-1); err != nil {
				return 0, fmt.Errorf("decode ModelInferRequest: %w", err)
			}
		}
		if num == rawInputField && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b[pos+n:])
			if m < 0 {
				return 0, fmt.Errorf("decode ModelInferRequest: raw_input_contents: %w", protowire.ParseError(m))
			}
			if start < pos {
				if err := merge.Unmarshal(b[start:pos], req); err != nil {
					return 0, fmt.Errorf("decode ModelInferRequest: %w", err)
				}
			}
			// The other runs hold no raw_input_contents: the order is kept.
			req.RawInputContents = append(req.RawInputContents, v[:len(v):len(v)])
			pos += n + m
			start = pos
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b[pos+n:])
		if m < 0 {
			return 0, fmt.Errorf("decode ModelInferRequest: field %d: %w", num, protowire.ParseError(m))
		}
		pos += n + m
	}
	if start < len(b) {
		if err := merge.Unmarshal(b[start:], req); err != nil {
			return 0, fmt.Errorf("decode ModelInferRequest: %w", err)
		}
	}
	return nested.decoded, nil
}

// nestedCount counts, over one ModelInferRequest, the nested entries that
// maxBytesElements, maxParameters and maxRank bound, and what the inputs'
// typed contents take decoded.
type nestedCount struct {
	bytes, params int
	// decoded is the bytes of the typed contents' elements decoded, twice:
	// as the message's slices and as the tensor decodeInputs copies them
	// into. An element takes up to eight times its bytes on the wire (an
	// INT64 zero is one byte): counted as encoded, a 64 MiB request held
	// 1 GiB in flight.
	decoded int64
}

// contentsElemSize is, for each numeric typed contents field
// (InferTensorContents field number), the size of an element in memory and
// on the wire (0: a varint).
var contentsElemSize = [...]struct{ mem, fixed int }{
	1: {1, 0}, 2: {4, 0}, 3: {8, 0}, 4: {4, 0}, 5: {8, 0}, // bool, int, int64, uint, uint64
	6: {4, 4}, 7: {8, 8}, // fp32, fp64
}

// check counts the entries of v, the i-th value of the request's field num
// (4 a parameters entry, 5 an input, 6 a requested output). Malformed
// nested bytes are left to the decoder, which says what is wrong.
func (c *nestedCount) check(num protowire.Number, v []byte, i int) error {
	switch num {
	case 4:
		return c.param()
	case 5:
		rank := 0
		err := eachField(v, func(f protowire.Number, typ protowire.Type, w []byte) error {
			switch {
			case f == 3 && typ == protowire.BytesType: // shape, packed
				for _, x := range w {
					if x < 0x80 {
						rank++
					}
				}
			case f == 3 && typ == protowire.VarintType:
				rank++
			case f == 4 && typ == protowire.BytesType:
				return c.param()
			case f == 5 && typ == protowire.BytesType: // contents
				return eachField(w, func(g protowire.Number, typ protowire.Type, x []byte) error {
					if g == 8 && typ == protowire.BytesType {
						if c.bytes++; c.bytes > maxBytesElements {
							return fmt.Errorf("more than %d bytes_contents elements (send large BYTES tensors in raw_input_contents)", maxBytesElements)
						}
					}
					c.contents(g, typ, x)
					return nil
				})
			}
			return nil
		})
		if err == nil && rank > maxRank {
			err = fmt.Errorf("inputs[%d]: a shape of %d dimensions: at most %d", i, rank, maxRank)
		}
		return err
	case 6:
		return eachField(v, func(f protowire.Number, typ protowire.Type, _ []byte) error {
			if f == 2 && typ == protowire.BytesType {
				return c.param()
			}
			return nil
		})
	}
	return nil
}

// contents counts the decoded bytes of a typed contents field g of wire
// type typ and bytes x.
func (c *nestedCount) contents(g protowire.Number, typ protowire.Type, x []byte) {
	if g == 8 { // bytes: a slice header and a copy of its bytes, which the tensor shares
		c.decoded += 24 + int64(len(x))
		return
	}
	if g < 1 || int(g) >= len(contentsElemSize) {
		return
	}
	size := contentsElemSize[g]
	elems := 1
	if typ == protowire.BytesType {
		if size.fixed > 0 {
			elems = len(x) / size.fixed
		} else { // packed varints: one ends at each byte under 0x80
			elems = 0
			for _, b := range x {
				if b < 0x80 {
					elems++
				}
			}
		}
	}
	c.decoded += 2 * int64(elems) * int64(size.mem)
}

func (c *nestedCount) param() error {
	if c.params++; c.params > maxParameters {
		return fmt.Errorf("more than %d parameters", maxParameters)
	}
	return nil
}

// eachField calls fn with each field of the protobuf message b: its
// number, wire type and, for a length-delimited one, its bytes. It stops
// quietly at malformed bytes: the decoder reports them.
func eachField(b []byte, fn func(protowire.Number, protowire.Type, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		var v []byte
		m := 0
		if typ == protowire.BytesType {
			v, m = protowire.ConsumeBytes(b)
		} else {
			m = protowire.ConsumeFieldValue(num, typ, b)
		}
		if m < 0 {
			return nil
		}
		if err := fn(num, typ, v); err != nil {
			return err
		}
		b = b[m:]
	}
	return nil
}

// undecoded is what the handlers of checkedDecode and checkedStream decode
// into: the request message, and why it did not decode (a codec error is
// always Internal in grpc-go; the handler answers it as InvalidArgument).
type undecoded struct {
	msg any
	bad error
}

// decodeError is the status of a request message that did not decode.
func decodeError(msg any, err error) error {
	name := fmt.Sprintf("%T", msg)
	if m, ok := msg.(proto.Message); ok {
		name = string(proto.MessageName(m))
	}
	return capMessage(status.Errorf(codes.InvalidArgument, "decode %s: %v", name, err))
}

// inferReply is a ModelInfer response on its way to the wire, with the
// request whose buffer its raw outputs may share (an output can be an input
// handed back, e.g. by a guest): the codec marshals it, then releases the
// request. Interceptors see it instead of a *inference.ModelInferResponse.
type inferReply struct {
	resp *inference.ModelInferResponse
	req  *inferRequest
}

// release gives the request's buffer back to the pool once nothing can read
// its tensors any more: the call returned, and not because its context
// ended (then the model may still be reading them; the buffer is left to
// the garbage collector), and after the response that may share it was
// marshalled.
func (r *inferRequest) release(pool mem.BufferPool, err error) {
	if r.buf == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	r.req.RawInputContents = nil
	pool.Put(r.buf)
	r.buf = nil
}

// inferenceDesc is the generated GRPCInferenceService description with the
// other methods checking their decoding (checkedDecode) and the ModelInfer
// handler replaced by modelInferHandler.
func inferenceDesc() *grpc.ServiceDesc {
	desc := checkedDecode(&inference.GRPCInferenceService_ServiceDesc)
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == "ModelInfer" {
			// It answers its own decode errors (inferRequest.bad):
			// checkedDecode's wrapper would cost every inference two
			// allocations.
			desc.Methods[i].Handler = modelInferHandler
		}
	}
	return desc
}

// modelInferHandler is the generated handler's shape, decoding into an
// inferRequest.
func modelInferHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	received(ctx) // the request is in (see receiveDeadline)
	s := srv.(*Inference)
	in := new(inferRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if in.bad != nil {
		return nil, capMessage(status.Error(codes.InvalidArgument, in.bad.Error()))
	}
	handler := func(ctx context.Context, req any) (any, error) {
		r := req.(*inferRequest)
		if err := s.admit(r.size); err != nil {
			r.release(buffers, nil)
			return nil, err
		}
		defer s.leave(r.size)
		resp, err := s.ModelInfer(ctx, &r.req)
		if err != nil {
			r.release(buffers, err)
			return nil, err
		}
		return &inferReply{resp: resp, req: r}, nil
	}
	if interceptor == nil {
		return handler(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: inference.GRPCInferenceService_ModelInfer_FullMethodName}
	return interceptor(ctx, in, info, handler)
}
