package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Bounds checkModule puts on a module before wazero sees it.
const (
	// maxLocals bounds the locals of one function (V8's limit): the
	// compiler spends memory per declared local.
	maxLocals = 50_000
	// maxTables bounds the tables a module declares, maxTableEntries the
	// size any of them may reach (8 bytes an entry on the host, outside
	// the memory limit).
	maxTables       = 16
	maxTableEntries = 1 << 20
	// maxGlobals, maxDataSegments and maxElements (the entries of all
	// element segments) bound what every instance copies on the host,
	// outside memory_limit_pages: wazero makes each instance ~85 bytes a
	// global, ~24 a data segment and ~40 a passive element entry, from 5,
	// 2 and 1 bytes of module (a 2 MB module of passive element entries
	// held 80 MiB an instance). Go's linker writes 8 globals, at most
	// 100,000 data segments (V8's limit) and one entry a function.
	maxGlobals      = 100_000
	maxDataSegments = 100_000
	maxElements     = maxTableEntries
	// maxTypes and maxTypeValues (the parameters and results of all the
	// types) bound what compiling a module adds for good to the runtime:
	// wazero gives every distinct function type an ID in a table of the
	// runtime that nothing ever shrinks (~100 bytes a type, more for long
	// ones): modules of 200,000 new types each kept 20 MiB a compile after
	// their Close. Go's guests declare about 15 types.
	maxTypes      = 10_000
	maxTypeValues = 100_000
)

// checkModule walks a module's sections and refuses one whose declared
// counts or lengths could not fit in the bytes that follow them. wazero's
// decoder sizes its slices from such counts before reading any entry, so a
// 15-byte module declaring 2^32-1 imports made it allocate hundreds of GiB:
// a fatal out-of-memory that no recover catches. It also refuses functions
// with more than maxLocals locals and imported tables (see limitTables). It
// checks structure only; wazero validates the rest.
func checkModule(wasm []byte) error {
	secs, err := sections(wasm)
	if err != nil {
		return err
	}
	for _, s := range secs {
		r := &wreader{b: wasm[s.start:s.end]}
		if err := r.section(s.id); err != nil {
			return fmt.Errorf("section %d: %w", s.id, err)
		}
	}
	return nil
}

// wreader reads a section's contents; every count and length it reads must
// fit in what is left.
type wreader struct {
	b   []byte
	err error
}

var errShort = errors.New("a count or length runs past the end of its section")

func (r *wreader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *wreader) u32() uint32 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || n > 5 || v > 1<<32-1 {
		r.fail(errors.New("malformed LEB128 integer"))
		return 0
	}
	r.b = r.b[n:]
	return uint32(v)
}

// sleb skips a signed LEB128 of up to max bytes.
func (r *wreader) sleb(max int) {
	for i := 0; ; i++ {
		if r.err != nil {
			return
		}
		if i == max || len(r.b) == 0 {
			r.fail(errors.New("malformed LEB128 integer"))
			return
		}
		c := r.b[0]
		r.b = r.b[1:]
		if c&0x80 == 0 {
			return
		}
	}
}

func (r *wreader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail(errShort)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// count reads a vector's length; each element takes at least min bytes.
func (r *wreader) count(min int) int {
	n := r.u32()
	if r.err == nil && uint64(n)*uint64(min) > uint64(len(r.b)) {
		r.fail(fmt.Errorf("%w (%d entries of at least %d bytes in %d)", errShort, n, min, len(r.b)))
		return 0
	}
	return int(n)
}

// skip drops n bytes.
func (r *wreader) skip(n int) {
	if r.err != nil {
		return
	}
	if n > len(r.b) {
		r.fail(errShort)
		return
	}
	r.b = r.b[n:]
}

// name skips a length-prefixed byte string.
func (r *wreader) name() { r.skip(r.count(1)) }

// valtype reads a value type: the one-byte forms only. The typed
// references of the GC and function-references proposals (0x63, 0x64 and
// rec groups 0x4E) are refused: their encodings are longer, and no guest
// this node serves needs them.
func (r *wreader) valtype() {
	switch t := r.byte(); t {
	case 0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F: // i32 i64 f32 f64 v128 funcref externref
	default:
		if r.err == nil {
			r.fail(fmt.Errorf("value type %#x is not supported", t))
		}
	}
}

func (r *wreader) limits() {
	flags := r.byte()
	r.u32()
	if flags&1 != 0 {
		r.u32()
	}
	if flags > 3 {
		r.fail(fmt.Errorf("limits flags %#x (64-bit limits) are not supported", flags))
	}
}

// expr skips a constant expression up to its end opcode.
func (r *wreader) expr() {
	for r.err == nil {
		switch op := r.byte(); op {
		case 0x0B: // end
			return
		case 0x41: // i32.const
			r.sleb(5)
		case 0x42: // i64.const
			r.sleb(10)
		case 0x43: // f32.const
			r.skip(4)
		case 0x44: // f64.const
			r.skip(8)
		case 0x23, 0xD2: // global.get, ref.func
			r.u32()
		case 0xD0: // ref.null
			r.byte()
		case 0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E: // extended constant arithmetic
		case 0xFD: // v128.const
			if r.u32() != 12 {
				r.fail(errors.New("unsupported instruction in a constant expression"))
			}
			r.skip(16)
		default:
			r.fail(fmt.Errorf("unsupported opcode %#x in a constant expression", op))
		}
	}
}

func (r *wreader) section(id byte) error {
	switch id {
	case 0: // custom
		if name := r.str(); r.err == nil && name == "name" {
			r.names()
		}
		return r.err
	case 1: // type
		n := r.count(3)
		if r.err == nil && n > maxTypes {
			r.fail(fmt.Errorf("%d function types, at most %d", n, maxTypes))
		}
		values := 0
		for range n {
			if form := r.byte(); form != 0x60 && r.err == nil {
				r.fail(fmt.Errorf("type form %#x is not supported", form))
			}
			for range 2 { // parameters, results
				k := r.count(1)
				if values += k; r.err == nil && values > maxTypeValues {
					r.fail(fmt.Errorf("function types of more than %d parameters and results in all", maxTypeValues))
				}
				for range k {
					r.valtype()
				}
			}
		}
	case 2: // import
		for range r.count(4) {
			r.name()
			r.name()
			switch kind := r.byte(); kind {
			case 0: // function
				r.u32()
			case 1:
				r.fail(errors.New("imported tables are not supported"))
			case 2: // memory
				r.limits()
			case 3: // global
				r.valtype()
				r.byte()
			case 4: // tag
				r.byte()
				r.u32()
			default:
				r.fail(fmt.Errorf("import kind %d", kind))
			}
		}
	case 3, 5, 13: // function, memory, tag: checked by count
		r.count(1)
		return r.err
	case 4: // table
		n := r.count(2)
		if r.err == nil && n > maxTables {
			r.fail(fmt.Errorf("%d tables, at most %d", n, maxTables))
		}
		return r.err
	case 6: // global
		n := r.count(3)
		if r.err == nil && n > maxGlobals {
			r.fail(fmt.Errorf("%d globals, at most %d", n, maxGlobals))
		}
		for range n {
			r.valtype()
			r.byte()
			r.expr()
		}
	case 7: // export
		for range r.count(3) {
			r.name()
			r.byte()
			r.u32()
		}
	case 8, 12: // start (a function index), data count
		r.u32()
	case 9: // element
		var entries uint64
		for range r.count(2) {
			entries += uint64(r.element())
		}
		if r.err == nil && entries > maxElements {
			r.fail(fmt.Errorf("element segments of %d entries, at most %d", entries, maxElements))
		}
	case 10: // code
		for range r.count(1) {
			size := r.count(1) // the body's bytes, each at least 1
			if r.err != nil {
				break
			}
			body := &wreader{b: r.b[:size]}
			var locals uint64
			for range body.count(2) {
				locals += uint64(body.u32())
				body.valtype()
			}
			if body.err != nil {
				r.fail(body.err)
			} else if locals > maxLocals {
				r.fail(fmt.Errorf("a function declares %d locals, at most %d", locals, maxLocals))
			}
			r.skip(size)
		}
	case 11: // data
		n := r.count(2)
		if r.err == nil && n > maxDataSegments {
			r.fail(fmt.Errorf("%d data segments, at most %d", n, maxDataSegments))
		}
		for range n {
			switch flags := r.u32(); flags {
			case 0:
				r.expr()
			case 1:
			case 2:
				r.u32()
				r.expr()
			default:
				r.fail(fmt.Errorf("data segment flags %d", flags))
			}
			r.name() // the bytes
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Errorf("%d trailing bytes", len(r.b)))
	}
	return r.err
}

// str reads a length-prefixed string.
func (r *wreader) str() string {
	n := r.count(1)
	if r.err != nil {
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// names checks the "name" custom section, which wazero decodes in full:
// its function-name and local-name maps are sized from declared counts.
// Other subsections are skipped.
func (r *wreader) names() {
	for r.err == nil && len(r.b) > 0 {
		id := r.byte()
		size := r.count(1)
		if r.err != nil {
			return
		}
		sub := &wreader{b: r.b[:size]}
		switch id {
		case 1: // function names: vec(index, name)
			for range sub.count(2) {
				sub.u32()
				sub.name()
			}
		case 2: // local names: vec(function, vec(index, name))
			for range sub.count(2) {
				sub.u32()
				for range sub.count(2) {
					sub.u32()
					sub.name()
				}
			}
		}
		if sub.err != nil {
			r.fail(fmt.Errorf("name section: %w", sub.err))
		}
		r.skip(size)
	}
}

// element skips one element segment (the eight forms of the binary format)
// and returns its number of entries.
func (r *wreader) element() int {
	flags := r.u32()
	if flags > 7 {
		r.fail(fmt.Errorf("element segment flags %d", flags))
		return 0
	}
	if flags&2 != 0 && flags&1 == 0 { // explicit table index
		r.u32()
	}
	if flags&1 == 0 { // active: an offset
		r.expr()
	}
	if flags&3 != 0 { // element kind (0x00) or reference type
		if k := r.byte(); k != 0x00 && k != 0x70 && k != 0x6F && r.err == nil {
			r.fail(fmt.Errorf("element type %#x is not supported", k))
		}
	}
	n := r.count(1)
	for range n {
		if flags&4 == 0 { // function indices
			r.u32()
		} else { // expressions
			r.expr()
		}
	}
	return n
}

// limitTables rewrites every table's maximum to at most maxTableEntries:
// table.grow otherwise lets a guest take up to 32 GiB per table on the
// host, outside memory_limit_pages (a 1 MiB guest held 255 MiB).
func limitTables(wasm []byte) ([]byte, error) {
	secs, err := sections(wasm)
	if err != nil {
		return nil, err
	}
	tab, ok := find(secs, 4)
	if !ok {
		return wasm, nil
	}
	r := &wreader{b: wasm[tab.start:tab.end]}
	n := r.count(2)
	body := binary.AppendUvarint(nil, uint64(n))
	for range n {
		ref := r.byte()
		if ref != 0x70 && ref != 0x6F {
			r.fail(fmt.Errorf("table type %#x is not supported", ref))
		}
		flags := r.byte()
		if flags > 1 {
			r.fail(fmt.Errorf("table limits flags %#x are not supported", flags))
		}
		lo, hi := uint64(r.u32()), uint64(maxTableEntries)
		if flags == 1 {
			hi = min(hi, uint64(r.u32()))
		}
		if r.err != nil {
			break
		}
		if lo > hi {
			return nil, fmt.Errorf("%w: a table of %d entries at start, the limit is %d", ErrMemory, lo, hi)
		}
		body = append(body, ref, 1)
		body = binary.AppendUvarint(body, lo)
		body = binary.AppendUvarint(body, hi)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(errors.New("trailing bytes in the table section"))
	}
	if r.err != nil {
		return nil, fmt.Errorf("table section: %w", r.err)
	}
	return replace(wasm, tab, body), nil
}
