package server

import (
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// zzWireSeeds are hand-built wire messages exercising protobuf merge
// semantics: repeated and map fields split around raw_input_contents,
// duplicate map keys, packed and unpacked typed contents, unknown fields,
// groups, field 7 with every wire type.
func zzWireSeeds() [][]byte {
	var seeds [][]byte
	tag := protowire.AppendTag
	str := func(b []byte, num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(b, num, protowire.BytesType), s)
	}
	msg := func(b []byte, num protowire.Number, m []byte) []byte {
		return protowire.AppendBytes(tag(b, num, protowire.BytesType), m)
	}
	raw := func(b []byte, v []byte) []byte { return msg(b, rawInputField, v) }

	// InferTensorContents with packed and unpacked int64 and fp32.
	var contents []byte
	contents = tag(contents, 3, protowire.VarintType) // int64_contents unpacked
	contents = protowire.AppendVarint(contents, 5)
	var packed []byte
	packed = protowire.AppendVarint(packed, 6)
	packed = protowire.AppendVarint(packed, uint64(1<<63))
	contents = msg(contents, 3, packed) // int64_contents packed
	contents = tag(contents, 6, protowire.Fixed32Type)
	contents = protowire.AppendFixed32(contents, 0x3f800000)
	contents = tag(contents, 99, protowire.VarintType) // unknown
	contents = protowire.AppendVarint(contents, 1)

	var input []byte
	input = str(input, 1, "x")
	input = str(input, 2, "INT64")
	input = tag(input, 3, protowire.VarintType)
	input = protowire.AppendVarint(input, 3)
	input = msg(input, 5, contents)
	input = msg(input, 5, contents) // singular message twice: merged

	param := func(k string, v int64) []byte {
		var p []byte
		p = tag(p, 2, protowire.VarintType) // int64_param
		p = protowire.AppendVarint(p, uint64(v))
		var e []byte
		e = str(e, 1, k)
		e = msg(e, 2, p)
		return e
	}

	var b []byte
	b = raw(b, []byte{1, 2, 3})
	b = msg(b, 4, param("k", 1))
	b = msg(b, 5, input)
	b = raw(b, nil)
	b = msg(b, 4, param("k", 2)) // duplicate key after a raw entry
	b = msg(b, 5, input)
	b = tag(b, rawInputField, protowire.VarintType) // field 7, wrong type
	b = protowire.AppendVarint(b, 9)
	b = tag(b, rawInputField, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 9)
	b = tag(b, rawInputField, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 9)
	b = tag(b, rawInputField, protowire.StartGroupType) // field 7 as a group holding a field 7
	b = raw(b, []byte{7})
	b = tag(b, rawInputField, protowire.EndGroupType)
	b = tag(b, 1000, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte{0x3a, 1, 1})
	b = str(b, 1, "m")
	b = raw(b, []byte{4, 5})
	b = str(b, 1, "m2")
	seeds = append(seeds, b)

	// A field-7 group whose end tag does not match.
	var g []byte
	g = tag(g, rawInputField, protowire.StartGroupType)
	g = tag(g, 8, protowire.EndGroupType)
	seeds = append(seeds, g)
	// End group at top level.
	seeds = append(seeds, tag(nil, rawInputField, protowire.EndGroupType))
	// Raw entry whose length runs past the end by one, after a good one.
	bad := raw(nil, []byte{1})
	bad = append(bad, 0x3a, 0x05, 1, 2, 3, 4)
	seeds = append(seeds, bad)
	// Field number 0, and the largest field number.
	seeds = append(seeds, []byte{0x02, 0x00})
	seeds = append(seeds, protowire.AppendVarint(tag(nil, protowire.MaxValidNumber, protowire.VarintType), 1))
	// Non-minimal (overlong) tag encodings of field 7.
	seeds = append(seeds, []byte{0xba, 0x00, 0x01, 0xaa})
	seeds = append(seeds, []byte{0xba, 0x80, 0x80, 0x00, 0x01, 0xaa})
	// A length varint of 10 bytes.
	seeds = append(seeds, []byte{0x3a, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0xaa})
	return seeds
}

func TestDecodeSeedsMatchProto(t *testing.T) {
	for _, s := range zzWireSeeds() {
		checkDecode(t, s)
	}
}

// Random structured requests, marshalled, then cut into pieces and shuffled
// at field boundaries, then mutated byte-wise: every outcome must match
// proto.Unmarshal.
func TestDecodeRandomMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 20000 {
		req := zzRandomRequest(rng)
		wire, err := proto.MarshalOptions{Deterministic: iter%2 == 0}.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		// Split into top-level fields and shuffle them.
		var fields [][]byte
		for pos := 0; pos < len(wire); {
			_, _, n := protowire.ConsumeField(wire[pos:])
			if n < 0 {
				t.Fatal("marshal produced bad wire")
			}
			fields = append(fields, wire[pos:pos+n])
			pos += n
		}
		rng.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
		var b []byte
		for _, f := range fields {
			b = append(b, f...)
		}
		checkDecode(t, b)
		if len(b) > 0 {
			m := append([]byte(nil), b...)
			for range 1 + rng.IntN(3) {
				m[rng.IntN(len(m))] = byte(rng.Uint32())
			}
			checkDecode(t, m)
			checkDecode(t, m[:rng.IntN(len(m))])
		}
	}
}

func zzRandomRequest(rng *rand.Rand) *inference.ModelInferRequest {
	r := &inference.ModelInferRequest{ModelName: "m", Id: "i"}
	params := func() map[string]*inference.InferParameter {
		if rng.IntN(2) == 0 {
			return nil
		}
		p := map[string]*inference.InferParameter{}
		for range rng.IntN(3) {
			p[string(rune('a'+rng.IntN(3)))] = &inference.InferParameter{ParameterChoice: &inference.InferParameter_StringParam{StringParam: "v"}}
		}
		return p
	}
	r.Parameters = params()
	for range rng.IntN(4) {
		in := &inference.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{int64(rng.IntN(3)), 2}, Parameters: params()}
		if rng.IntN(2) == 0 {
			in.Contents = &inference.InferTensorContents{Fp32Contents: []float32{1, 2}, Int64Contents: []int64{-1, int64(rng.Uint64())}, BytesContents: [][]byte{{1}, {}}}
		}
		r.Inputs = append(r.Inputs, in)
	}
	for range rng.IntN(3) {
		r.Outputs = append(r.Outputs, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: "y", Parameters: params()})
	}
	for range rng.IntN(4) {
		b := make([]byte, rng.IntN(20))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		r.RawInputContents = append(r.RawInputContents, b)
	}
	return r
}

// FuzzDecodeMatchesProto is FuzzDecodeInferRequest with the seeds above.
func FuzzDecodeMatchesProto(f *testing.F) {
	for _, s := range zzWireSeeds() {
		f.Add(s)
	}
	for _, req := range sampleRequests() {
		wire, _ := proto.Marshal(req)
		f.Add(wire)
	}
	f.Fuzz(func(t *testing.T, wire []byte) { checkDecode(t, wire) })
}
