package conntrack_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/netblocks/netblocks/conntrack"
	"github.com/netblocks/netblocks/internal/testutil"
)

// restartDirEnv carries the bpffs directory of TestRestartPinned to the
// process it re-executes, which runs TestRestartChild.
const restartDirEnv = "NETBLOCKS_CT_RESTART_DIR"

// restartReportPrefix starts the line in which TestRestartChild reports what
// it found.
const restartReportPrefix = "conntrack-restart-report: "

// Subdirectories of the bpffs of TestRestartPinned.
const (
	restartTableDir   = "ct"
	restartTrackerDir = "tracker"
)

// restartReport is what the restarted process found.
type restartReport struct {
	MaxEntries int
	Timeouts   conntrack.Timeouts
	Entries    []conntrack.Entry
}

// TestRestartChild is the restarted process of TestRestartPinned: it takes
// over the pinned table and tracker, reports the table on stdout and exits,
// leaving both pinned. It runs only when re-executed with restartDirEnv set.
func TestRestartChild(t *testing.T) {
	dir := os.Getenv(restartDirEnv)
	if dir == "" {
		return // only the process TestRestartPinned re-executes, with restartDirEnv set, does anything
	}
	tbl, err := conntrack.Open(filepath.Join(dir, restartTableDir))
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	tr, err := conntrack.OpenTracker(filepath.Join(dir, restartTrackerDir))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close() // pinned: stays attached

	rep := restartReport{MaxEntries: tbl.MaxEntries(), Timeouts: tbl.Timeouts()}
	for e, err := range tbl.Iterate() {
		if err != nil {
			t.Fatal(err)
		}
		rep.Entries = append(rep.Entries, e)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s%s\n", restartReportPrefix, b)
}

// restartRunChild re-executes the test binary to run TestRestartChild on the
// pins under dir, and returns its report.
func restartRunChild(dir string) (restartReport, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRestartChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), restartDirEnv+"="+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return restartReport{}, fmt.Errorf("run restarted process: %w\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	var rep restartReport
	found := false
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), restartReportPrefix); ok {
			if err := json.Unmarshal([]byte(line), &rep); err != nil {
				return rep, fmt.Errorf("decode report of restarted process: %w", err)
			}
			found = true
		}
	}
	if !found {
		return rep, fmt.Errorf("restarted process reported nothing (did TestRestartChild skip?)\nstdout:\n%s\nstderr:\n%s", &stdout, &stderr)
	}
	return rep, nil
}

// restartUnpinTracker takes over the tracker pinned in dir and detaches it.
func restartUnpinTracker(dir string) error {
	tr, err := conntrack.OpenTracker(dir)
	if err != nil {
		return err
	}
	return errors.Join(tr.Unpin(), tr.Close())
}

// restartTCXPrograms counts the programs attached with TCX to node's eth0.
func restartTCXPrograms(node *testutil.Node) (int, error) {
	n := 0
	err := node.NS.Do(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: node.Index, Attach: at})
			if err != nil {
				return err
			}
			n += len(res.Programs)
		}
		return nil
	})
	return n, err
}

// TestRestartPinned checks that a pinned table and tracker track while no
// process holds them, and that another process takes them over.
func TestRestartPinned(t *testing.T) {
	t.Parallel()
	const nonTCP = 90 * time.Second // not the default: the restarted process must read it from the table
	bpffs := testutil.TempBPFFS(t)
	top := testutil.NewTopology(t, testutil.TopologyConfig{})
	client, server := top.Nodes[0], top.Nodes[1]
	tableDir, trackerDir := filepath.Join(bpffs, restartTableDir), filepath.Join(bpffs, restartTrackerDir)

	tbl, err := conntrack.New(conntrack.Config{PinPath: tableDir, MaxEntries: 1024, Timeouts: conntrack.Timeouts{NonTCP: nonTCP}})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := trafficAttach(tbl, client)
	if err != nil {
		tbl.Close()
		testutil.SkipOrFail(t, err)
	}
	if err := tr.Pin(trackerDir); err != nil {
		tr.Close()
		tbl.Close()
		t.Fatal(err)
	}
	// Runs before the namespaces go, if the test stops before its own unpin.
	t.Cleanup(func() {
		if err := restartUnpinTracker(trackerDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	})

	payload := []byte("tracked across a restart")
	clientA, serverA, err := trafficUDPEcho(client, server, false, 40001, 2, payload)
	if err != nil {
		tr.Close()
		tbl.Close()
		t.Fatal(err)
	}
	flowA := conntrack.Flow{Src: clientA, Dst: serverA, Proto: conntrack.UDP}
	trafficWantUDPEntry(t, trafficLookup(t, tbl, flowA), flowA, false, 2, len(payload))

	// Nothing of the table or the tracker stays open in this process.
	if err := errors.Join(tr.Close(), tbl.Close()); err != nil {
		t.Fatal(err)
	}

	// A flow that starts while no process holds the table.
	clientB, serverB, err := trafficUDPEcho(client, server, false, 40002, 3, payload)
	if err != nil {
		t.Fatal(err)
	}
	flowB := conntrack.Flow{Src: clientB, Dst: serverB, Proto: conntrack.UDP}

	rep, err := restartRunChild(bpffs)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Entries {
		t.Logf("restarted process saw: %v", e)
	}
	if rep.MaxEntries != 1024 {
		t.Errorf("restarted process: MaxEntries %d, want 1024", rep.MaxEntries)
	}
	if rep.Timeouts.NonTCP != nonTCP {
		t.Errorf("restarted process: timeouts %+v, want NonTCP %v", rep.Timeouts, nonTCP)
	}
	for _, c := range []struct {
		flow conntrack.Flow
		n    int
	}{{flowA, 2}, {flowB, 3}} {
		i := slices.IndexFunc(rep.Entries, func(e conntrack.Entry) bool { return e.Flow == c.flow })
		if i < 0 {
			t.Errorf("restarted process did not see %v", c.flow)
			continue
		}
		trafficWantUDPEntry(t, rep.Entries[i], c.flow, false, c.n, len(payload))
	}

	// The restarted process left the tracker attached; detach it now.
	if n, err := restartTCXPrograms(client); err != nil || n != 2 {
		t.Errorf("after the restarted process: %d TCX programs on %s (%v), want the tracker's 2", n, client.Link, err)
	}
	if err := restartUnpinTracker(trackerDir); err != nil {
		t.Fatalf("unpin tracker: %v", err)
	}
	if n, err := restartTCXPrograms(client); err != nil || n != 0 {
		t.Errorf("after unpinning the tracker: %d TCX programs on %s (%v), want 0", n, client.Link, err)
	}

	// Detached, it tracks nothing more; the pinned table keeps what it had.
	clientC, serverC, err := trafficUDPEcho(client, server, false, 40003, 1, payload)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err = conntrack.Open(tableDir)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	flowC := conntrack.Flow{Src: clientC, Dst: serverC, Proto: conntrack.UDP}
	if e, err := tbl.Lookup(flowC); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("flow after the tracker was detached: %v, %v; want ErrKeyNotExist", e, err)
	}
	trafficWantUDPEntry(t, trafficLookup(t, tbl, flowB), flowB, false, 3, len(payload))
}

func TestRestartOpenNothingPinned(t *testing.T) {
	t.Parallel()
	bpffs := testutil.TempBPFFS(t)
	empty, missing := filepath.Join(bpffs, "empty"), filepath.Join(bpffs, "missing")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{empty, missing} {
		tbl, err := conntrack.Open(dir)
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open(%s) on nothing pinned: %v, want an error wrapping os.ErrNotExist", dir, err)
		}
		if tbl != nil {
			t.Errorf("Open(%s) on nothing pinned returned a table", dir)
			tbl.Close()
		}
		if _, err := conntrack.OpenTracker(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("OpenTracker(%s) on nothing pinned: %v, want an error wrapping os.ErrNotExist", dir, err)
		}
	}
	// Opening creates nothing.
	if ents, err := os.ReadDir(empty); err != nil || len(ents) != 0 {
		t.Errorf("Open left %v in %s (%v), want nothing", ents, empty, err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of %s created it (%v)", missing, err)
	}
}

// restartPins lists the names pinned in dir.
func restartPins(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestRestartPinnedSize(t *testing.T) {
	t.Parallel()
	const size = 512
	dir := filepath.Join(testutil.TempBPFFS(t), "ct")
	top := testutil.NewTopology(t, testutil.TopologyConfig{})

	tbl, err := conntrack.New(conntrack.Config{PinPath: dir, MaxEntries: size})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := trafficAttach(tbl, top.Nodes[0])
	if err != nil {
		tbl.Close()
		testutil.SkipOrFail(t, err)
	}
	payload := []byte("some entries to keep")
	client, server, err := trafficUDPEcho(top.Nodes[0], top.Nodes[1], true, 40001, 2, payload)
	// Detach (the tracker is not pinned), so that the table stays as it is.
	if err := errors.Join(err, tr.Close()); err != nil {
		tbl.Close()
		t.Fatal(err)
	}
	flow := conntrack.Flow{Src: client, Dst: server, Proto: conntrack.UDP}
	want := trafficDump(t, tbl)
	if e, ok := want[flow]; !ok {
		t.Errorf("no entry for %v in %v", flow, want)
	} else {
		trafficWantUDPEntry(t, e, flow, true, 2, len(payload))
	}
	if err := tbl.Close(); err != nil {
		t.Fatal(err)
	}
	pins := restartPins(t, dir)
	if len(pins) == 0 {
		t.Fatalf("New pinned nothing in %s", dir)
	}
	// Times differ by the jitter of each read's wall/monotonic conversion.
	sameEntries := cmp.Options{cmpopts.EquateApproxTime(time.Millisecond), cmpopts.EquateComparable(netip.AddrPort{})}

	// Another size: refused, and the pinned table is left as it was.
	other, err := conntrack.New(conntrack.Config{PinPath: dir, MaxEntries: 2 * size})
	if !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Errorf("New with MaxEntries %d over a pinned table of %d: %v, want ErrMapIncompatible", 2*size, size, err)
	}
	if other != nil {
		other.Close()
	}
	if got := restartPins(t, dir); !slices.Equal(got, pins) {
		t.Errorf("after the refused New, pinned %v, want %v", got, pins)
	}
	opened, err := conntrack.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if opened.MaxEntries() != size {
		t.Errorf("Open after the refused New: MaxEntries %d, want %d", opened.MaxEntries(), size)
	}
	if diff := cmp.Diff(want, trafficDump(t, opened), sameEntries); diff != "" {
		t.Errorf("Open after the refused New: entries differ (-before +after):\n%s", diff)
	}
	opened.Close()

	// MaxEntries 0, or the pinned size, reopens the table as it is.
	for _, size0 := range []int{0, size} {
		reopened, err := conntrack.New(conntrack.Config{PinPath: dir, MaxEntries: size0})
		if err != nil {
			t.Errorf("New with MaxEntries %d over a pinned table of %d: %v", size0, size, err)
			continue
		}
		if reopened.MaxEntries() != size {
			t.Errorf("New with MaxEntries %d: MaxEntries %d, want the pinned %d", size0, reopened.MaxEntries(), size)
		}
		if diff := cmp.Diff(want, trafficDump(t, reopened), sameEntries); diff != "" {
			t.Errorf("New with MaxEntries %d: entries differ (-before +after):\n%s", size0, diff)
		}
		if err := reopened.Close(); err != nil {
			t.Error(err)
		}
		if got := restartPins(t, dir); !slices.Equal(got, pins) {
			t.Errorf("after New with MaxEntries %d, pinned %v, want %v", size0, got, pins)
		}
	}
}
