package onnx

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
)

// graphValue is what an ONNX file declares about one graph input or output,
// beyond what ONNX Runtime's C API reports: whether a shape is declared at
// all (ORT reports "no shape" and "rank 0" alike, as zero dimensions), and
// the symbolic name of each dynamic dimension (ORT reports them as -1).
type graphValue struct {
	hasShape bool
	params   []string // per dimension: its dim_param, "" when fixed or anonymous
}

// Field numbers of the onnx.proto messages read here.
const (
	modelGraph        = 7  // ModelProto.graph
	graphInput        = 11 // GraphProto.input
	graphOutput       = 12 // GraphProto.output
	valueInfoName     = 1  // ValueInfoProto.name
	valueInfoType     = 2  // ValueInfoProto.type
	typeTensor        = 1  // TypeProto.tensor_type
	tensorTypeShape   = 2  // TypeProto.Tensor.shape
	shapeDim          = 1  // TensorShapeProto.dim
	dimParam          = 2  // TensorShapeProto.Dimension.dim_param
	maxValueInfoBytes = 1 << 20
)

var errNoGraph = errors.New("no graph in model")

// readGraphValues reads the declared inputs and outputs of the ONNX
// ModelProto in r. It streams past everything else, weights included, so it
// never holds more than one ValueInfoProto in memory; when r is an
// io.Seeker (a file), it seeks past the large fields instead of reading them.
func readGraphValues(r io.Reader) (map[string]graphValue, error) {
	s := &pbStream{r: bufio.NewReaderSize(r, 64<<10), src: r}
	for {
		num, typ, err := s.tag()
		if err == io.EOF {
			return nil, errNoGraph
		}
		if err != nil {
			return nil, err
		}
		if num == modelGraph && typ == protowire.BytesType {
			n, err := s.length()
			if err != nil {
				return nil, err
			}
			return s.graph(s.off + n)
		}
		if err := s.skip(typ); err != nil {
			return nil, err
		}
	}
}

// graph reads GraphProto fields up to offset end.
func (s *pbStream) graph(end int64) (map[string]graphValue, error) {
	vals := make(map[string]graphValue)
	for s.off < end {
		num, typ, err := s.tag()
		if err != nil {
			return nil, noEOF(err)
		}
		if (num != graphInput && num != graphOutput) || typ != protowire.BytesType {
			if err := s.skip(typ); err != nil {
				return nil, err
			}
			continue
		}
		n, err := s.length()
		if err != nil {
			return nil, err
		}
		if n > maxValueInfoBytes {
			return nil, fmt.Errorf("graph value of %d bytes", n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(s, b); err != nil {
			return nil, noEOF(err)
		}
		name, v, err := parseValueInfo(b)
		if err != nil {
			return nil, err
		}
		if _, dup := vals[name]; !dup {
			vals[name] = v
		}
	}
	if s.off != end {
		return nil, errors.New("graph overruns its length")
	}
	return vals, nil
}

func parseValueInfo(b []byte) (string, graphValue, error) {
	var name string
	var v graphValue
	err := eachBytesField(b, func(num protowire.Number, b []byte) error {
		switch num {
		case valueInfoName:
			name = string(b)
		case valueInfoType:
			return eachBytesField(b, func(num protowire.Number, b []byte) error {
				if num != typeTensor {
					return nil
				}
				return eachBytesField(b, func(num protowire.Number, b []byte) error {
					if num != tensorTypeShape {
						return nil
					}
					v.hasShape = true
					return eachBytesField(b, func(num protowire.Number, b []byte) error {
						if num != shapeDim {
							return nil
						}
						param := ""
						err := eachBytesField(b, func(num protowire.Number, b []byte) error {
							if num == dimParam {
								param = string(b)
							}
							return nil
						})
						v.params = append(v.params, param)
						return err
					})
				})
			})
		}
		return nil
	})
	return name, v, err
}

// eachBytesField calls fn with every length-delimited field of the message b
// and skips the others.
func eachBytesField(b []byte, fn func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if err := fn(num, v); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// pbStream reads protobuf wire format from a stream, counting the bytes read.
type pbStream struct {
	r   *bufio.Reader
	src io.Reader // what r reads; skip seeks it when it can
	off int64
}

func (s *pbStream) ReadByte() (byte, error) {
	c, err := s.r.ReadByte()
	if err == nil {
		s.off++
	}
	return c, err
}

func (s *pbStream) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.off += int64(n)
	return n, err
}

// tag reads a field key. It returns io.EOF only at a clean end of input.
func (s *pbStream) tag() (protowire.Number, protowire.Type, error) {
	start := s.off
	k, err := binary.ReadUvarint(s)
	if err != nil {
		if err == io.EOF && s.off != start {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(k)
	if num < protowire.MinValidNumber {
		return 0, 0, fmt.Errorf("invalid field number at offset %d", start)
	}
	return num, typ, nil
}

// length reads the length of a length-delimited field.
func (s *pbStream) length() (int64, error) {
	n, err := binary.ReadUvarint(s)
	if err != nil {
		return 0, noEOF(err)
	}
	if n > 1<<62 {
		return 0, errors.New("field length overflows")
	}
	return int64(n), nil
}

// skip reads past the value of a field of wire type typ.
func (s *pbStream) skip(typ protowire.Type) error {
	var n int64
	switch typ {
	case protowire.VarintType:
		_, err := binary.ReadUvarint(s)
		return noEOF(err)
	case protowire.Fixed32Type:
		n = 4
	case protowire.Fixed64Type:
		n = 8
	case protowire.BytesType:
		var err error
		if n, err = s.length(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported wire type %d", typ)
	}
	if sk, ok := s.src.(io.Seeker); ok && n > int64(s.r.Buffered()) {
		// Past what r holds: seek over the rest (weights, mostly). A seek
		// past the end is not an error; the next read finds the end.
		if _, err := sk.Seek(n-int64(s.r.Buffered()), io.SeekCurrent); err != nil {
			return err
		}
		s.r.Reset(s.src)
		s.off += n
		return nil
	}
	m, err := io.CopyN(io.Discard, s, n)
	if m != n {
		return noEOF(err)
	}
	return nil
}

// noEOF turns an end of input in the middle of a message into
// io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
