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
	return s.skipN(n)
}

// skipN reads past the next n bytes.
func (s *pbStream) skipN(n int64) error {
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

// Field numbers of the onnx.proto messages that can hold a TensorProto,
// walked by externalData.
const (
	modelTrainingInfo  = 20  // ModelProto.training_info
	modelFunctions     = 25  // ModelProto.functions
	trainingInit       = 1   // TrainingInfoProto.initialization
	trainingAlgorithm  = 2   // TrainingInfoProto.algorithm
	graphNode          = 1   // GraphProto.node
	graphInitializer   = 5   // GraphProto.initializer
	graphSparseInit    = 15  // GraphProto.sparse_initializer
	functionNode       = 7   // FunctionProto.node
	functionAttr       = 11  // FunctionProto.attribute_proto
	nodeAttribute      = 5   // NodeProto.attribute
	attrTensor         = 5   // AttributeProto.t
	attrGraph          = 6   // AttributeProto.g
	attrTensors        = 10  // AttributeProto.tensors
	attrGraphs         = 11  // AttributeProto.graphs
	attrSparseTensor   = 22  // AttributeProto.sparse_tensor
	attrSparseTensors  = 23  // AttributeProto.sparse_tensors
	sparseValues       = 1   // SparseTensorProto.values
	sparseIndices      = 2   // SparseTensorProto.indices
	tensorName         = 8   // TensorProto.name
	tensorExternalData = 13  // TensorProto.external_data
	tensorDataLocation = 14  // TensorProto.data_location
	entryKey           = 1   // StringStringEntryProto.key
	entryValue         = 2   // StringStringEntryProto.value
	maxNesting         = 100 // messages within messages: protobuf's own parse limit
)

// msgKind is a message type that externalData descends into.
type msgKind int

const (
	kindModel msgKind = iota
	kindTraining
	kindGraph
	kindFunction
	kindNode
	kindAttr
	kindSparse
	kindTensor
)

// children maps, per message type, the fields that hold messages which can
// (eventually) hold a TensorProto to their type.
var children = map[msgKind]map[protowire.Number]msgKind{
	kindModel:    {modelGraph: kindGraph, modelTrainingInfo: kindTraining, modelFunctions: kindFunction},
	kindTraining: {trainingInit: kindGraph, trainingAlgorithm: kindGraph},
	kindGraph:    {graphNode: kindNode, graphInitializer: kindTensor, graphSparseInit: kindSparse},
	kindFunction: {functionNode: kindNode, functionAttr: kindAttr},
	kindNode:     {nodeAttribute: kindAttr},
	kindAttr: {attrTensor: kindTensor, attrGraph: kindGraph, attrTensors: kindTensor, attrGraphs: kindGraph,
		attrSparseTensor: kindSparse, attrSparseTensors: kindSparse},
	kindSparse: {sparseValues: kindTensor, sparseIndices: kindTensor},
}

// externalData reads the ONNX ModelProto in r and describes the first
// tensor (an initializer, a Constant's or another attribute's value, in any
// graph or function) whose data lives in another file ("initializer \"w\"
// in \"w.bin\""); "" when every tensor holds its data in r. Like
// readGraphValues it seeks past the weights.
func externalData(r io.Reader) (string, error) {
	s := &pbStream{r: bufio.NewReaderSize(r, 64<<10), src: r}
	return s.walk(kindModel, -1, 0)
}

// walk reads the fields of one message of type kind up to offset end (-1:
// the end of input), descending into those that can hold tensors.
func (s *pbStream) walk(kind msgKind, end int64, depth int) (string, error) {
	if depth > maxNesting {
		return "", fmt.Errorf("messages nested deeper than %d", maxNesting)
	}
	if kind == kindTensor {
		return s.tensor(end)
	}
	for end < 0 || s.off < end {
		num, typ, err := s.tag()
		if err == io.EOF && end < 0 {
			return "", nil
		}
		if err != nil {
			return "", noEOF(err)
		}
		sub, ok := children[kind][num]
		if !ok || typ != protowire.BytesType {
			if err := s.skip(typ); err != nil {
				return "", err
			}
			continue
		}
		n, err := s.length()
		if err != nil {
			return "", err
		}
		if end >= 0 && n > end-s.off {
			return "", errors.New("field overruns its message")
		}
		if found, err := s.walk(sub, s.off+n, depth+1); found != "" || err != nil {
			return found, err
		}
	}
	if s.off != end {
		return "", errors.New("field overruns its message")
	}
	return "", nil
}

// tensor reads a TensorProto up to offset end and describes it if its
// data is external: data_location EXTERNAL, or any external_data entry.
func (s *pbStream) tensor(end int64) (string, error) {
	var name, location string
	external := false
	for s.off < end {
		num, typ, err := s.tag()
		if err != nil {
			return "", noEOF(err)
		}
		switch {
		case num == tensorDataLocation && typ == protowire.VarintType:
			v, err := binary.ReadUvarint(s)
			if err != nil {
				return "", noEOF(err)
			}
			external = external || v == 1 // TensorProto.EXTERNAL
		case (num == tensorName || num == tensorExternalData) && typ == protowire.BytesType:
			n, err := s.length()
			if err != nil {
				return "", err
			}
			if n > end-s.off {
				return "", errors.New("field overruns its message")
			}
			if n > maxValueInfoBytes {
				if err := s.skipN(n); err != nil {
					return "", err
				}
				external = external || num == tensorExternalData
				continue
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(s, b); err != nil {
				return "", noEOF(err)
			}
			if num == tensorName {
				name = string(b)
				continue
			}
			external = true
			var key, value string
			if err := eachBytesField(b, func(num protowire.Number, b []byte) error {
				switch num {
				case entryKey:
					key = string(b)
				case entryValue:
					value = string(b)
				}
				return nil
			}); err != nil {
				return "", err
			}
			if key == "location" {
				location = value
			}
		default:
			if err := s.skip(typ); err != nil {
				return "", err
			}
		}
	}
	if s.off != end {
		return "", errors.New("field overruns its message")
	}
	if !external {
		return "", nil
	}
	return fmt.Sprintf("tensor %q in %q", name, location), nil
}
