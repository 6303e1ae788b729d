// Command literal is a guest written from guests/ABI.md alone, without
// guests/sdk or guests/abi: its exports, its imports and the tensor list
// are coded by hand from the document, so that the SDK's tests check the
// document against the node. The "mode" config value chooses what
// preprocess does:
//
//   - "echo": returns every input, inline ones copied inline and handle
//     ones by handle (dtype and shape as tensor_info describes them);
//   - "read": returns every input inline, handle ones read with tensor_read
//     (out_cap 0 first, as the document allows, to learn the length);
//   - "init": returns INT32 scalar "errno", what config_get returned when
//     called from _initialize (the document says ENOCALL, -8);
//   - "error": returns the error message "literal: boom".
package main

import (
	"encoding/binary"
	"errors"
	"unsafe"
)

//go:wasmimport cyxwiz config_get
func configGet(kp, kn, op, oc uint32) int32

//go:wasmimport cyxwiz tensor_info
func tensorInfo(h, op, oc uint32) int32

//go:wasmimport cyxwiz tensor_read
func tensorRead(h, op, oc uint32) int32

func main() {}

var initErrno int32

func init() {
	var out [16]byte
	k := []byte("mode")
	initErrno = configGet(addr(k), uint32(len(k)), addr(out[:]), uint32(len(out)))
}

func addr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

var in, out []byte

//go:wasmexport cyxwiz_abi_version
func version() int32 { return 1 }

//go:wasmexport cyxwiz_alloc
func alloc(size int32) int32 {
	in = make([]byte, max(size, 1))
	return int32(addr(in))
}

//go:wasmexport cyxwiz_entries
func entries() int32 { return 1 << 0 } // preprocess

type entry struct {
	name   string
	dtype  byte
	shape  []int64
	handle uint32
	data   []byte
}

//go:wasmexport preprocess
func preprocess(p, n int32) int64 {
	buf := unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n)
	res, err := run(append([]byte(nil), buf...))
	if err != nil {
		out = []byte(err.Error())
		return -(int64(addr(out))<<32 | int64(len(out)))
	}
	out = res
	return int64(addr(out))<<32 | int64(len(out))
}

func mode() string {
	k := []byte("mode")
	b := make([]byte, 64)
	n := configGet(addr(k), uint32(len(k)), addr(b), uint32(len(b)))
	if n < 0 || int(n) > len(b) {
		return ""
	}
	return string(b[:n])
}

func run(b []byte) ([]byte, error) {
	list, err := decode(b)
	if err != nil {
		return nil, err
	}
	switch mode() {
	case "echo":
		for i, e := range list {
			if e.handle == 0 {
				continue
			}
			n := tensorInfo(e.handle, 0, 0)
			if n <= 0 {
				return nil, errors.New("literal: tensor_info failed")
			}
			info := make([]byte, n)
			if tensorInfo(e.handle, addr(info), uint32(n)) != n {
				return nil, errors.New("literal: tensor_info changed its length")
			}
			d, err := decode(info)
			if err != nil || len(d) != 1 || d[0].handle != e.handle {
				return nil, errors.New("literal: tensor_info is not a one-entry handle list")
			}
			list[i].dtype, list[i].shape = d[0].dtype, d[0].shape
		}
		return encode(list), nil
	case "read":
		for i, e := range list {
			if e.handle == 0 {
				continue
			}
			n := tensorRead(e.handle, 0, 0)
			if n < 0 {
				return nil, errors.New("literal: tensor_read failed")
			}
			data := make([]byte, n)
			if n > 0 && tensorRead(e.handle, addr(data), uint32(n)) != n {
				return nil, errors.New("literal: tensor_read changed its length")
			}
			list[i].handle, list[i].data = 0, data
		}
		return encode(list), nil
	case "init":
		v := binary.LittleEndian.AppendUint32(nil, uint32(initErrno))
		return encode([]entry{{name: "errno", dtype: 8, shape: []int64{}, data: v}}), nil
	case "error":
		return nil, errors.New("literal: boom")
	}
	return nil, errors.New("literal: unknown mode")
}

// decode reads a tensor list as ABI.md lays it out.
func decode(b []byte) ([]entry, error) {
	bad := errors.New("literal: malformed list")
	if len(b) < 12 || string(b[:4]) != "CYXT" || b[4] != 1 {
		return nil, bad
	}
	count := binary.LittleEndian.Uint32(b[8:])
	b = b[12:]
	var list []entry
	for range count {
		var e entry
		nl := int(binary.LittleEndian.Uint16(b))
		e.name = string(b[2 : 2+nl])
		b = b[2+nl:]
		e.dtype = b[0]
		kind, rank := b[1], int(b[2])
		b = b[4:]
		e.shape = make([]int64, rank)
		for k := range e.shape {
			e.shape[k] = int64(binary.LittleEndian.Uint64(b[8*k:]))
		}
		b = b[8*rank:]
		e.handle = binary.LittleEndian.Uint32(b)
		dl := binary.LittleEndian.Uint64(b[4:])
		b = b[12:]
		if kind == 0 {
			e.data = b[:dl]
			b = b[dl:]
		}
		list = append(list, e)
	}
	if len(b) != 0 {
		return nil, bad
	}
	return list, nil
}

// encode writes a tensor list as ABI.md lays it out.
func encode(list []entry) []byte {
	b := []byte("CYXT")
	b = append(b, 1, 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(list)))
	for _, e := range list {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(e.name)))
		b = append(b, e.name...)
		kind := byte(0)
		if e.handle != 0 {
			kind = 1
		}
		b = append(b, e.dtype, kind, byte(len(e.shape)), 0)
		for _, d := range e.shape {
			b = binary.LittleEndian.AppendUint64(b, uint64(d))
		}
		b = binary.LittleEndian.AppendUint32(b, e.handle)
		b = binary.LittleEndian.AppendUint64(b, uint64(len(e.data)))
		if e.handle == 0 {
			b = append(b, e.data...)
		}
	}
	return b
}
