package lbmap

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// Verdicts as BPF_PROG_RUN returns them.
const (
	tcxNext = 0xffffffff // TC_ACT_UNSPEC: pass on
	tcShot  = 2          // TC_ACT_SHOT: dropped
)

// harness is a Table and conntrack table with the datapath loaded, run with
// BPF_PROG_RUN.
type harness struct {
	*Table
	ct    *conntrack.Table
	progs lbPrograms
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	ct, err := conntrack.New(conntrack.Config{MaxEntries: 1 << 16})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ct.Close() })
	tbl, err := New(cfg, ct)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tbl.Close() })
	spec, err := loadLb()
	if err != nil {
		tb.Fatal(err)
	}
	repl, err := tbl.replacements(spec)
	if err != nil {
		tb.Fatal(err)
	}
	h := &harness{Table: tbl, ct: ct}
	if err := spec.LoadAndAssign(&h.progs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.progs.Close() })
	return h
}

// run runs prog on frame and returns its verdict and output frame.
func run(tb testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	tb.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("run %v: %v", prog, err)
	}
	return ret, opts.DataOut
}

// fromClient runs a client's packet through ingress and returns the result.
func (h *harness) fromClient(tb testing.TB, frame []byte) (uint32, []byte) {
	return run(tb, h.progs.NbLbFromClient, frame)
}

// toClient runs a packet toward the client through egress.
func (h *harness) toClient(tb testing.TB, frame []byte) (uint32, []byte) {
	return run(tb, h.progs.NbLbToClient, frame)
}

func TestSmokeDNAT(t *testing.T) {
	h := newHarness(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.10:53")
	be := netip.MustParseAddrPort("192.0.2.50:5353")
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	if err := h.Upsert(Service{Frontend: vip, Protocol: UDP, Backends: []Backend{{Addr: be, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	q := testutil.Packet{Src: client.Addr(), Dst: vip.Addr(), Proto: layers.IPProtocolUDP, SrcPort: client.Port(), DstPort: vip.Port(), Payload: []byte("query")}
	verdict, out := h.fromClient(t, testutil.BuildPacket(t, q))
	want := q
	want.Dst, want.DstPort = be.Addr(), be.Port()
	if verdict != tcxNext || !bytes.Equal(out, testutil.BuildPacket(t, want)) {
		t.Fatalf("verdict %#x\n got  %x\n want %x", verdict, out, testutil.BuildPacket(t, want))
	}
	r := testutil.Packet{Src: be.Addr(), Dst: client.Addr(), Proto: layers.IPProtocolUDP, SrcPort: be.Port(), DstPort: client.Port(), Payload: []byte("answer")}
	verdict, out = h.toClient(t, testutil.BuildPacket(t, r))
	wantR := r
	wantR.Src, wantR.SrcPort = vip.Addr(), vip.Port()
	if verdict != tcxNext || !bytes.Equal(out, testutil.BuildPacket(t, wantR)) {
		t.Fatalf("reply verdict %#x\n got  %x\n want %x", verdict, out, testutil.BuildPacket(t, wantR))
	}
}
