package testutil

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode"

	"github.com/cilium/ebpf/btf"
)

// cMember is a member of a C struct, with anonymous structs and unions
// flattened into their parent.
type cMember struct {
	name     string
	offset   uint32 // bytes from the start of the checked struct
	size     int    // bytes; bits for a bitfield
	bitfield bool
	union    int // the outermost anonymous union holding it, or -1
}

// goField is a field of the Go struct being checked.
type goField struct {
	name   string // the Go field name
	cName  string // the C member name it maps to
	tagged bool   // cName comes from a `btf:"..."` tag
	offset uintptr
	size   uintptr
}

// CheckLayout compares a Go struct that mirrors a C struct by hand with the C
// struct's BTF and returns an error listing every mismatch, or nil.
//
// spec holds the C struct, e.g. the Types of an *ebpf.CollectionSpec loaded
// from the compiled object. cStruct names a struct, or a typedef of one.
// goValue is a value of the Go struct or a pointer to one.
//
// Checked are the total size, the offset and size of every Go field, C
// members with no Go field and Go fields with no C member. A Go field maps to
// the C member named by its `btf:"member_name"` tag; without a tag, to the
// member whose name equals the field name converted from CamelCase to
// snake_case (SrcPort to src_port, IfIndex to if_index, L4Proto to l4_proto),
// ignoring case; failing that, to the member whose name equals the field name
// when case and underscores are ignored (IPv6 to ipv6). Fields named "_" are
// padding and are ignored.
//
// Nested structs, unions and arrays are compared by offset and size only, not
// member by member. Members of an anonymous struct or union in the C struct
// count as members of the C struct itself; the members of an anonymous union
// are alternatives, so once one of them has a Go field the others may have
// none. Bitfields cannot be mirrored in Go: a C struct with bitfield members
// always fails the check.
func CheckLayout(spec *btf.Spec, cStruct string, goValue any) error {
	if spec == nil {
		return fmt.Errorf("check layout of C struct %s: nil BTF spec", cStruct)
	}
	st, err := findStruct(spec, cStruct)
	if err != nil {
		return fmt.Errorf("check layout of C struct %s: %w", cStruct, err)
	}

	goType := reflect.TypeOf(goValue)
	if goType != nil && goType.Kind() == reflect.Pointer {
		goType = goType.Elem()
	}
	if goType == nil || goType.Kind() != reflect.Struct {
		return fmt.Errorf("check layout of C struct %s: Go value of type %T is not a struct or a pointer to one", cStruct, goValue)
	}

	members, err := flattenMembers(st.Members, 0, -1, new(int))
	if err != nil {
		return fmt.Errorf("check layout of C struct %s: %w", cStruct, err)
	}

	errs := compareLayout(goType, st, members)
	if len(errs) > 0 {
		return fmt.Errorf("check layout of Go %s against C struct %s: %w", goType, cStruct, errors.Join(errs...))
	}
	return nil
}

// RequireLayout calls tb.Fatal with the error of [CheckLayout] if there is
// one.
func RequireLayout(tb testing.TB, spec *btf.Spec, cStruct string, goValue any) {
	tb.Helper()

	if err := CheckLayout(spec, cStruct, goValue); err != nil {
		tb.Fatal(err)
	}
}

// findStruct looks up the struct called name in spec, or the struct behind
// the typedef called name.
func findStruct(spec *btf.Spec, name string) (*btf.Struct, error) {
	var st *btf.Struct
	err := spec.TypeByName(name, &st)
	if err == nil {
		return st, nil
	}
	if !errors.Is(err, btf.ErrNotFound) {
		return nil, fmt.Errorf("find struct: %w", err)
	}

	var td *btf.Typedef
	if tdErr := spec.TypeByName(name, &td); tdErr != nil {
		// Report the struct lookup's error: a struct is what was asked for.
		return nil, fmt.Errorf("find struct: %w", err)
	}
	st, ok := btf.As[*btf.Struct](td)
	if !ok {
		return nil, fmt.Errorf("find struct: typedef %s is %s, not a struct", name, btf.UnderlyingType(td))
	}
	return st, nil
}

// flattenMembers lists ms, which start at byte base, descending into
// anonymous structs and unions. union is the group of the anonymous union ms
// belong to (-1 for none); next numbers new groups.
func flattenMembers(ms []btf.Member, base uint32, union int, next *int) ([]cMember, error) {
	var out []cMember
	for _, m := range ms {
		offset := base + m.Offset.Bytes()

		if m.Name == "" {
			var (
				inner []cMember
				err   error
			)
			switch t := btf.UnderlyingType(m.Type).(type) {
			case *btf.Struct:
				inner, err = flattenMembers(t.Members, offset, union, next)
			case *btf.Union:
				group := union
				if group < 0 {
					group = *next
					*next++
				}
				inner, err = flattenMembers(t.Members, offset, group, next)
			default:
				// An unnamed non-composite member: padding.
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, inner...)
			continue
		}

		cm := cMember{name: m.Name, offset: offset, union: union}
		if m.BitfieldSize > 0 {
			cm.bitfield, cm.size = true, int(m.BitfieldSize)
		} else {
			size, err := btf.Sizeof(m.Type)
			if err != nil {
				return nil, fmt.Errorf("get size of member %s: %w", m.Name, err)
			}
			cm.size = size
		}
		out = append(out, cm)
	}
	return out, nil
}

// goFields lists the fields of the struct type t, except "_".
func goFields(t reflect.Type) []goField {
	var out []goField
	for f := range t.Fields() {
		if f.Name == "_" {
			continue
		}
		gf := goField{name: f.Name, offset: f.Offset, size: f.Type.Size()}
		if tag, ok := f.Tag.Lookup("btf"); ok && tag != "" {
			gf.cName, gf.tagged = tag, true
		} else {
			gf.cName = snakeCase(f.Name)
		}
		out = append(out, gf)
	}
	return out
}

// compareLayout returns every difference between goType and st, whose
// flattened members are members.
func compareLayout(goType reflect.Type, st *btf.Struct, members []cMember) []error {
	var errs []error
	if goType.Size() != uintptr(st.Size) {
		errs = append(errs, fmt.Errorf("size: Go %d bytes, C %d bytes", goType.Size(), st.Size))
	}

	matchedBy := make(map[int]string)  // member index -> Go field
	unionMatched := make(map[int]bool) // union group -> some member matched
	for _, f := range goFields(goType) {
		i, err := matchMember(f, members)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m := members[i]
		if other, ok := matchedBy[i]; ok {
			errs = append(errs, fmt.Errorf("field %s: maps to C member %s, as does field %s", f.name, m.name, other))
			continue
		}
		matchedBy[i] = f.name
		if m.union >= 0 {
			unionMatched[m.union] = true
		}

		if m.bitfield {
			errs = append(errs, fmt.Errorf("field %s: C member %s is a bitfield of %d bits, which Go cannot mirror", f.name, m.name, m.size))
			continue
		}
		if f.offset != uintptr(m.offset) {
			errs = append(errs, fmt.Errorf("field %s: offset Go %d, C member %s %d", f.name, f.offset, m.name, m.offset))
		}
		if f.size != uintptr(m.size) {
			errs = append(errs, fmt.Errorf("field %s: size Go %d bytes, C member %s %d bytes", f.name, f.size, m.name, m.size))
		}
	}

	for i, m := range members {
		if _, ok := matchedBy[i]; ok || (m.union >= 0 && unionMatched[m.union]) {
			continue
		}
		if m.bitfield {
			errs = append(errs, fmt.Errorf("C member %s (bitfield of %d bits at byte %d): no Go field", m.name, m.size, m.offset))
			continue
		}
		errs = append(errs, fmt.Errorf("C member %s (offset %d, %d bytes): no Go field", m.name, m.offset, m.size))
	}
	return errs
}

// matchMember returns the index of the C member f maps to.
func matchMember(f goField, members []cMember) (int, error) {
	if f.tagged {
		for i, m := range members {
			if m.name == f.cName {
				return i, nil
			}
		}
		for i, m := range members {
			if strings.EqualFold(m.name, f.cName) {
				return i, nil
			}
		}
		return -1, fmt.Errorf("field %s (tag %q, offset %d, %d bytes): no C member", f.name, f.cName, f.offset, f.size)
	}

	for i, m := range members {
		if strings.EqualFold(m.name, f.cName) {
			return i, nil
		}
	}

	loose := strings.ReplaceAll(f.name, "_", "")
	match := -1
	for i, m := range members {
		if strings.EqualFold(strings.ReplaceAll(m.name, "_", ""), loose) {
			if match >= 0 {
				return -1, fmt.Errorf("field %s: matches both C members %s and %s; add a btf tag", f.name, members[match].name, m.name)
			}
			match = i
		}
	}
	if match < 0 {
		return -1, fmt.Errorf("field %s (C name %s, offset %d, %d bytes): no C member", f.name, f.cName, f.offset, f.size)
	}
	return match, nil
}

// snakeCase converts a CamelCase Go name to snake_case: an underscore goes
// before an upper-case letter that follows a lower-case letter or a digit,
// or that starts a word after an acronym (HTTPServer to http_server).
func snakeCase(s string) string {
	rs := []rune(s)
	var b strings.Builder
	for i, r := range rs {
		if i > 0 && unicode.IsUpper(r) {
			prev := rs[i-1]
			nextLower := i+1 < len(rs) && unicode.IsLower(rs[i+1])
			if unicode.IsLower(prev) || unicode.IsDigit(prev) || (unicode.IsUpper(prev) && nextLower) {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}
