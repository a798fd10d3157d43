package testutil

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/netblocks/netblocks/internal/kernel"
)

// layoutSpec returns a BTF spec holding, as clang would emit them:
//
//	struct nb_inner { __u16 a; __u16 b; };
//	struct nb_key {
//		__u32 saddr;
//		__u32 daddr;
//		__u16 src_port;
//		__u16 dst_port;
//		__u8  l4_proto;
//		__u8  flags;
//		/* 2 bytes padding */
//		__u32 if_index;
//		__u8  mac[6];
//		/* 2 bytes padding */
//		struct nb_inner inner;
//		union { __u32 v4; __u8 v4_bytes[4]; };
//	};
//	typedef struct nb_key nb_key_t;
//	struct nb_bits { __u8 lo:4, hi:4; __u8 x; };
func layoutSpec(t *testing.T) *btf.Spec {
	t.Helper()

	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	index := &btf.Int{Name: "__ARRAY_SIZE_TYPE__", Size: 4}

	inner := &btf.Struct{Name: "nb_inner", Size: 4, Members: []btf.Member{
		{Name: "a", Type: u16, Offset: 0},
		{Name: "b", Type: u16, Offset: 16},
	}}
	union := &btf.Union{Size: 4, Members: []btf.Member{
		{Name: "v4", Type: u32},
		{Name: "v4_bytes", Type: &btf.Array{Index: index, Type: u8, Nelems: 4}},
	}}
	key := &btf.Struct{Name: "nb_key", Size: 36, Members: []btf.Member{
		{Name: "saddr", Type: u32, Offset: 0 * 8},
		{Name: "daddr", Type: u32, Offset: 4 * 8},
		{Name: "src_port", Type: u16, Offset: 8 * 8},
		{Name: "dst_port", Type: u16, Offset: 10 * 8},
		{Name: "l4_proto", Type: u8, Offset: 12 * 8},
		{Name: "flags", Type: u8, Offset: 13 * 8},
		{Name: "if_index", Type: u32, Offset: 16 * 8},
		{Name: "mac", Type: &btf.Array{Index: index, Type: u8, Nelems: 6}, Offset: 20 * 8},
		{Name: "inner", Type: inner, Offset: 28 * 8},
		{Name: "", Type: union, Offset: 32 * 8},
	}}
	typedef := &btf.Typedef{Name: "nb_key_t", Type: key}
	bits := &btf.Struct{Name: "nb_bits", Size: 2, Members: []btf.Member{
		{Name: "lo", Type: u8, Offset: 0, BitfieldSize: 4},
		{Name: "hi", Type: u8, Offset: 4, BitfieldSize: 4},
		{Name: "x", Type: u8, Offset: 8},
	}}

	b, err := btf.NewBuilder([]btf.Type{key, typedef, bits}, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := b.Spec()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// nbKey mirrors struct nb_key.
type nbKey struct {
	Saddr   uint32
	Daddr   uint32
	SrcPort uint16
	DstPort uint16
	L4Proto uint8
	Flags   uint8
	_       [2]byte
	IfIndex uint32
	MAC     [6]byte
	_       [2]byte
	Inner   struct{ A, B uint16 }
	V4      uint32
}

// nbKeyTagged mirrors struct nb_key with tags and the other union member.
type nbKeyTagged struct {
	Src     uint32 `btf:"saddr"`
	Dst     uint32 `btf:"daddr"`
	SrcPort uint16
	DstPort uint16
	Proto   uint8 `btf:"l4_proto"`
	Flags   uint8
	_       [2]byte
	Ifindex uint32 // Matches if_index when underscores are ignored.
	MAC     [6]byte
	_       [2]byte
	Inner   uint32
	Bytes   [4]byte `btf:"v4_bytes"`
}

// nbKeyWrongOffset has dst_port and l4_proto swapped.
type nbKeyWrongOffset struct {
	Saddr   uint32
	Daddr   uint32
	SrcPort uint16
	L4Proto uint8
	_       uint8
	DstPort uint16
	Flags   uint8
	_       uint8
	IfIndex uint32
	MAC     [6]byte
	_       [2]byte
	Inner   uint32
	V4      uint32
}

// nbKeyWrongSize has a mac of 4 bytes.
type nbKeyWrongSize struct {
	Saddr   uint32
	Daddr   uint32
	SrcPort uint16
	DstPort uint16
	L4Proto uint8
	Flags   uint8
	_       [2]byte
	IfIndex uint32
	MAC     [4]byte
	_       [4]byte
	Inner   uint32
	V4      uint32
}

// nbKeyMissing has no field for flags.
type nbKeyMissing struct {
	Saddr   uint32
	Daddr   uint32
	SrcPort uint16
	DstPort uint16
	L4Proto uint8
	_       [3]byte
	IfIndex uint32
	MAC     [6]byte
	_       [2]byte
	Inner   uint32
	V4      uint32
}

// nbKeyExtra has a field in C's padding after flags.
type nbKeyExtra struct {
	Saddr   uint32
	Daddr   uint32
	SrcPort uint16
	DstPort uint16
	L4Proto uint8
	Flags   uint8
	Extra   uint16
	IfIndex uint32
	MAC     [6]byte
	_       [2]byte
	Inner   uint32
	V4      uint32
}

// nbKeyShort lacks the union and so is 4 bytes short.
type nbKeyShort struct {
	Saddr   uint32
	Daddr   uint32
	SrcPort uint16
	DstPort uint16
	L4Proto uint8
	Flags   uint8
	_       [2]byte
	IfIndex uint32
	MAC     [6]byte
	_       [2]byte
	Inner   uint32
}

// nbBits tries to mirror struct nb_bits.
type nbBits struct {
	Lo uint8
	X  uint8
}

func TestCheckLayout(t *testing.T) {
	t.Parallel()

	spec := layoutSpec(t)

	for _, tc := range []struct {
		name    string
		cStruct string
		goValue any
		want    []string // substrings of the error; nil for no error
	}{
		{name: "match", cStruct: "nb_key", goValue: nbKey{}},
		{name: "pointer", cStruct: "nb_key", goValue: &nbKey{}},
		{name: "typedef", cStruct: "nb_key_t", goValue: nbKey{}},
		{name: "tags and loose names", cStruct: "nb_key", goValue: nbKeyTagged{}},
		{name: "wrong offset", cStruct: "nb_key", goValue: nbKeyWrongOffset{},
			want: []string{"field DstPort: offset Go 12, C member dst_port 10", "field L4Proto: offset Go 10, C member l4_proto 12", "field Flags: offset Go 14"}},
		{name: "wrong size", cStruct: "nb_key", goValue: nbKeyWrongSize{},
			want: []string{"field MAC: size Go 4 bytes, C member mac 6 bytes"}},
		{name: "missing field", cStruct: "nb_key", goValue: nbKeyMissing{},
			want: []string{"C member flags (offset 13, 1 bytes): no Go field"}},
		{name: "extra field", cStruct: "nb_key", goValue: nbKeyExtra{},
			want: []string{"field Extra (C name extra, offset 14, 2 bytes): no C member"}},
		{name: "total size", cStruct: "nb_key", goValue: nbKeyShort{},
			want: []string{"size: Go 32 bytes, C 36 bytes", "C member v4 (offset 32, 4 bytes): no Go field", "C member v4_bytes"}},
		{name: "bitfield", cStruct: "nb_bits", goValue: nbBits{},
			want: []string{"field Lo: C member lo is a bitfield of 4 bits", "C member hi (bitfield of 4 bits at byte 0): no Go field"}},
		{name: "unknown struct", cStruct: "nb_nope", goValue: nbKey{}, want: []string{"nb_nope", "not found"}},
		{name: "not a struct", cStruct: "nb_key", goValue: 42, want: []string{"int is not a struct"}},
		{name: "nil value", cStruct: "nb_key", goValue: nil, want: []string{"not a struct"}},
	} {
		err := CheckLayout(spec, tc.cStruct, tc.goValue)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not contain %q:\n%v", tc.name, w, err)
			}
		}
	}

	if err := CheckLayout(nil, "nb_key", nbKey{}); err == nil {
		t.Error("nil spec: no error")
	}
}

func TestCheckLayoutAmbiguous(t *testing.T) {
	t.Parallel()

	u8 := &btf.Int{Name: "__u8", Size: 1}
	st := &btf.Struct{Name: "nb_amb", Size: 2, Members: []btf.Member{
		{Name: "s_addr", Type: u8, Offset: 0},
		{Name: "sa_ddr", Type: u8, Offset: 8},
	}}
	b, err := btf.NewBuilder([]btf.Type{st}, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := b.Spec()
	if err != nil {
		t.Fatal(err)
	}

	type amb struct {
		SAddr uint8 // s_addr: exact
		Saddr uint8 `btf:"sa_ddr"`
	}
	if err := CheckLayout(spec, "nb_amb", amb{}); err != nil {
		t.Errorf("tagged: %v", err)
	}

	type loose struct {
		Saddr uint8 // Matches s_addr and sa_ddr loosely.
		X     uint8 `btf:"sa_ddr"`
	}
	err = CheckLayout(spec, "nb_amb", loose{})
	if err == nil || !strings.Contains(err.Error(), "matches both C members s_addr and sa_ddr") {
		t.Errorf("ambiguous loose match: %v", err)
	}
}

func TestRequireLayout(t *testing.T) {
	t.Parallel()

	spec := layoutSpec(t)
	for _, tc := range []struct {
		goValue any
		want    decision
	}{
		{nbKey{}, decidedPass},
		{nbKeyMissing{}, decidedFail},
	} {
		rec, returned := recordTB(t, func(tb testing.TB) { RequireLayout(tb, spec, "nb_key", tc.goValue) })
		if got := decide(t, rec, returned); got != tc.want {
			t.Errorf("RequireLayout(%T): %v, want %v; output: %s", tc.goValue, got, tc.want, rec.output())
		}
	}
}

// TestCheckLayoutKernel checks mirrors of uapi structs against the running
// kernel's BTF, real clang-emitted BTF.
func TestCheckLayoutKernel(t *testing.T) {
	t.Parallel()
	RequireFeature(t, kernel.BTF)

	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}

	type ethhdr struct {
		HDest   [6]byte
		HSource [6]byte
		HProto  uint16
	}
	RequireLayout(t, spec, "ethhdr", ethhdr{})

	type udphdr struct {
		Source, Dest, Len, Check uint16
	}
	RequireLayout(t, spec, "udphdr", udphdr{})

	// struct bpf_sock_tuple { union { struct {...} ipv4; struct {...} ipv6; }; }
	type bpfSockTuple struct {
		IPv6 [36]byte // The larger union member; ipv4 is an alternative.
	}
	RequireLayout(t, spec, "bpf_sock_tuple", bpfSockTuple{})

	// A wrong mirror fails.
	type badUDPHdr struct {
		Source, Dest uint16
		Len          uint32
	}
	if err := CheckLayout(spec, "udphdr", badUDPHdr{}); err == nil {
		t.Error("wrong udphdr mirror passed")
	}
}

func TestSnakeCase(t *testing.T) {
	t.Parallel()

	for in, want := range map[string]string{
		"SrcPort":    "src_port",
		"IfIndex":    "if_index",
		"L4Proto":    "l4_proto",
		"Saddr":      "saddr",
		"MAC":        "mac",
		"SrcIP":      "src_ip",
		"HTTPServer": "http_server",
		"Addr6":      "addr6",
		"lifetime":   "lifetime",
		"RxBytes":    "rx_bytes",
		"BackendID":  "backend_id",
	} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}
