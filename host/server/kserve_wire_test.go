package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

func sampleRequests() []*inference.ModelInferRequest {
	return []*inference.ModelInferRequest{
		{},
		{ModelName: "m", ModelVersion: "2", Id: "req-1",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{
				{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}},
				{Name: "y", Datatype: "BYTES", Shape: []int64{1}},
			},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "out"}},
			Parameters:       map[string]*inference.InferParameter{"p": {ParameterChoice: &inference.InferParameter_Int64Param{Int64Param: 7}}},
			RawInputContents: [][]byte{{1, 2, 3, 4, 5, 6, 7, 8}, {3, 0, 0, 0, 'a', 'b', 'c'}},
		},
		{ModelName: "typed", Inputs: []*inference.ModelInferRequest_InferInputTensor{
			{Name: "x", Datatype: "INT64", Shape: []int64{3}, Contents: &inference.InferTensorContents{Int64Contents: []int64{1, -2, 3}}},
		}},
		{ModelName: "empty raw", RawInputContents: [][]byte{{}, {9}}},
	}
}

// checkDecode decodes wire both ways and requires the same outcome.
func checkDecode(t *testing.T, wire []byte) {
	t.Helper()
	var want, got inference.ModelInferRequest
	wantErr := proto.Unmarshal(wire, &want)
	_, gotErr := decodeInferRequest(wire, &got)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("proto.Unmarshal err = %v, decodeInferRequest err = %v (wire %x)", wantErr, gotErr, wire)
	}
	if wantErr == nil && !proto.Equal(&want, &got) {
		t.Fatalf("decoded %v, want %v", &got, &want)
	}
}

func TestDecodeInferRequestMatchesProto(t *testing.T) {
	for _, req := range sampleRequests() {
		wire, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		checkDecode(t, wire)
	}
}

// Field order on the wire is the sender's choice: raw_input_contents may
// come first, or between other fields.
func TestDecodeInferRequestInterleavedFields(t *testing.T) {
	var b []byte
	b = protowire.AppendTag(b, rawInputField, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte{1, 2, 3, 4})
	b = protowire.AppendTag(b, 1, protowire.BytesType) // model_name
	b = protowire.AppendString(b, "m")
	b = protowire.AppendTag(b, rawInputField, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte{5, 6, 7, 8})
	in, _ := proto.Marshal(&inference.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1}})
	b = protowire.AppendTag(b, 5, protowire.BytesType) // inputs
	b = protowire.AppendBytes(b, in)
	b = protowire.AppendTag(b, 1, protowire.BytesType) // model_name again: last one wins
	b = protowire.AppendString(b, "m2")
	checkDecode(t, b)

	var got inference.ModelInferRequest
	if _, err := decodeInferRequest(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ModelName != "m2" || len(got.RawInputContents) != 2 || !bytes.Equal(got.RawInputContents[1], []byte{5, 6, 7, 8}) {
		t.Fatalf("decoded %v", &got)
	}
	// The raw contents alias the buffer, capped so that appending to one
	// cannot write over the next field.
	if r := got.RawInputContents[0]; cap(r) != len(r) || &r[0] != &b[2] {
		t.Fatalf("raw_input_contents[0] does not alias the wire buffer (cap %d)", cap(r))
	}
}

func TestDecodeInferRequestRejectsMalformed(t *testing.T) {
	good, _ := proto.Marshal(sampleRequests()[1])
	cases := map[string][]byte{
		"truncated":        good[:len(good)-3],
		"bad tag":          {0x00},
		"raw runs past":    {0x3a, 0x10, 1, 2},
		"bad utf8 name":    {0x0a, 0x02, 0xff, 0xfe},
		"raw as varint":    {0x38, 0x01}, // field 7 with the wrong wire type
		"varint overflows": {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	for name, wire := range cases {
		t.Run(name, func(t *testing.T) { checkDecode(t, wire) })
	}
	var req inference.ModelInferRequest
	if _, err := decodeInferRequest(good[:len(good)-3], &req); err == nil {
		t.Fatal("truncated request decoded")
	}
}

func FuzzDecodeInferRequest(f *testing.F) {
	for _, req := range sampleRequests() {
		wire, _ := proto.Marshal(req)
		f.Add(wire)
	}
	f.Add([]byte{0x3a, 0x02, 1, 2, 0x0a, 0x01, 'm'})
	f.Fuzz(func(t *testing.T, wire []byte) { checkDecode(t, wire) })
}

// The codec copies a multi-buffer message once into a pooled buffer that
// the request's raw contents alias, and release gives it back unless the
// call ended with its context.
func TestWireCodecPooledBuffer(t *testing.T) {
	req := sampleRequests()[1]
	wire, _ := proto.Marshal(req)
	// Split the message across buffers, as HTTP/2 frames split it.
	var data mem.BufferSlice
	for i := 0; i < len(wire); i += 7 {
		data = append(data, mem.SliceBuffer(wire[i:min(i+7, len(wire))]))
	}
	codec := newWireCodec(buffers)
	var r inferRequest
	if err := codec.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&r.req, req) || r.buf == nil {
		t.Fatalf("decoded %v (buf %v)", &r.req, r.buf != nil)
	}
	r.release(buffers, context.DeadlineExceeded)
	if r.buf == nil {
		t.Fatal("buffer released although the model may still read it")
	}
	r.release(buffers, errors.New("model failed"))
	if r.buf != nil || r.req.RawInputContents != nil {
		t.Fatal("buffer kept after the call ended")
	}

	// Other messages take the standard path.
	var other inference.ModelInferRequest
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &other); err != nil || !proto.Equal(&other, req) {
		t.Fatalf("standard decode: %v %v", err, &other)
	}
}

func TestTensorPoolClasses(t *testing.T) {
	p := &tensorPool{}
	for _, n := range []int{0, 1, 256, 257, 110592, 1 << 20, 1<<26 + 1} {
		b := p.Get(n)
		if len(*b) != n {
			t.Fatalf("Get(%d) has length %d", n, len(*b))
		}
		if c := cap(*b); n <= 1<<maxClass && (c < n || c&(c-1) != 0 || c > max(2*n, 1<<minClass)) {
			t.Fatalf("Get(%d) has capacity %d", n, c)
		}
		p.Put(b)
	}
	odd := make([]byte, 1000)
	p.Put(&odd) // not a class size: dropped, not pooled
	if b := p.Get(1000); cap(*b) != 1024 {
		t.Fatalf("Get(1000) capacity %d", cap(*b))
	}
}

// A response whose raw outputs share the request's buffer is marshalled
// before that buffer can be handed out again.
func TestReplyMarshalledBeforeBufferReuse(t *testing.T) {
	codec := newWireCodec(buffers)
	raw := bytes.Repeat([]byte{1, 2, 3, 4}, 8192) // 32 KiB
	wire, _ := proto.Marshal(&inference.ModelInferRequest{ModelName: "m",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{8192}}},
		RawInputContents: [][]byte{raw}})
	for range 20 { // sync.Pool drops some Puts under the race detector
		var r inferRequest
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &r); err != nil {
			t.Fatal(err)
		}
		// An echo: the output is the input's bytes.
		reply := &inferReply{resp: &inference.ModelInferResponse{RawOutputContents: r.req.RawInputContents}, req: &r}
		out, err := codec.Marshal(reply)
		if err != nil {
			t.Fatal(err)
		}
		// Whoever takes the buffer next overwrites it.
		b := buffers.Get(len(wire))
		for i := range *b {
			(*b)[i] = 0xee
		}
		var resp inference.ModelInferResponse
		if err := proto.Unmarshal(out.Materialize(), &resp); err != nil {
			t.Fatal(err)
		}
		out.Free()
		buffers.Put(b)
		if len(resp.RawOutputContents) != 1 || !bytes.Equal(resp.RawOutputContents[0], raw) {
			t.Fatal("the response was changed by the next user of its request's buffer")
		}
	}
}

// A request is refused, before it is decoded, when it has more than
// maxEntries inputs, requested outputs or raw_input_contents: each entry
// takes two bytes on the wire and up to a hundred and fifty decoded, and a
// 64 MiB request made the node allocate 5 GB.
func TestDecodeBoundsEntries(t *testing.T) {
	for _, field := range []protowire.Number{5, 6, rawInputField} {
		var wire []byte
		for range 4 * maxEntries {
			wire = protowire.AppendTag(wire, field, protowire.BytesType)
			wire = append(wire, 0)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var req inference.ModelInferRequest
		_, err := decodeInferRequest(wire, &req)
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than %d %s", maxEntries, entryFields[field])) {
			t.Errorf("field %d: %d entries decoded: %v", field, 4*maxEntries, err)
		}
		// Inputs and outputs are refused before anything is decoded (raw
		// entries up to the bound are taken as they come).
		if mb := (after.TotalAlloc - before.TotalAlloc) >> 20; mb > 32 && field != rawInputField {
			t.Errorf("field %d: %d MiB allocated for a %d MiB request", field, mb, len(wire)>>20)
		}
		// As many as the bound are decoded.
		if _, err := decodeInferRequest(wire[:2*maxEntries], &req); err != nil {
			t.Errorf("field %d: %d entries: %v", field, maxEntries, err)
		}
	}
}

// The nested entries that cost far more decoded than on the wire are
// bounded before decoding: empty bytes_contents (~20× their wire size),
// parameters entries (~17×) and shape dimensions (8×). A 64 MiB request of
// them decoded to more than a gigabyte.
func TestDecodeBoundsNestedEntries(t *testing.T) {
	msg := func(fields ...[]byte) []byte { return slices.Concat(fields...) }
	field := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	repeat := func(n int, b []byte) []byte { return bytes.Repeat(b, n) }
	param := field(4, msg(field(1, []byte("k")), field(2, nil)))
	outParam := field(2, msg(field(1, []byte("k")), field(2, nil)))
	emptyBytes := field(8, nil)
	packedShape := func(rank int) []byte { return field(3, bytes.Repeat([]byte{1}, rank)) }
	for name, tc := range map[string]struct {
		wire []byte
		want string // "" when it decodes
	}{
		"bytes_contents at the bound": {field(5, field(5, repeat(maxBytesElements, emptyBytes))), ""},
		"bytes_contents over, one input": {field(5, field(5, repeat(maxBytesElements+1, emptyBytes))),
			fmt.Sprintf("more than %d bytes_contents", maxBytesElements)},
		"bytes_contents over, two inputs": {msg(field(5, field(5, repeat(maxBytesElements/2+1, emptyBytes))), field(5, field(5, repeat(maxBytesElements/2, emptyBytes)))),
			"bytes_contents"},
		"bytes_contents over, contents repeated": {field(5, msg(field(5, repeat(maxBytesElements, emptyBytes)), field(5, emptyBytes))),
			"bytes_contents"},
		"parameters at the bound":     {msg(repeat(maxParameters/2, param), field(5, repeat(maxParameters/4, param)), field(6, repeat(maxParameters/4, outParam))), ""},
		"request parameters over":     {repeat(maxParameters+1, param), fmt.Sprintf("more than %d parameters", maxParameters)},
		"input parameters over":       {field(5, repeat(maxParameters+1, param)), "parameters"},
		"output parameters over":      {field(6, repeat(maxParameters+1, outParam)), "parameters"},
		"shape at the bound":          {field(5, packedShape(maxRank)), ""},
		"shape over, packed":          {msg(field(5, nil), field(5, packedShape(maxRank+1))), fmt.Sprintf("inputs[1]: a shape of %d dimensions: at most %d", maxRank+1, maxRank)},
		"shape over, packed in parts": {field(5, msg(packedShape(maxRank), packedShape(1))), "dimensions"},
		"shape over, unpacked":        {field(5, repeat(maxRank+1, protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 7))), "dimensions"},
		"huge shape":                  {field(5, packedShape(8<<20)), "dimensions"},
	} {
		t.Run(name, func(t *testing.T) {
			var req inference.ModelInferRequest
			_, err := decodeInferRequest(tc.wire, &req)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if tc.want == "" {
				// The differential: what proto.Unmarshal makes of the same bytes.
				var want inference.ModelInferRequest
				if err := proto.Unmarshal(tc.wire, &want); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(&req, &want) {
					t.Error("decoded differently from proto.Unmarshal")
				}
			}
		})
	}
}
