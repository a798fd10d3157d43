package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/netblocks/netblocks/ipam"
)

// The crash test's worker processes are this test binary, re-executed with
// these variables set.
const (
	crashWorkerEnv  = "NB_IPAM_CRASH_WORKER"
	crashDBEnv      = "NB_IPAM_CRASH_DB"
	crashJournalEnv = "NB_IPAM_CRASH_JOURNAL"
)

func crashRanges() []ipam.Range {
	return []ipam.Range{
		{Subnet: netip.MustParsePrefix("10.0.0.0/26")}, // 61 addresses: workers run out
		{Subnet: netip.MustParsePrefix("fd00::/120")},
	}
}

// TestCrashSafetyBolt runs several processes that allocate and release on
// one bbolt file and kills them with SIGKILL at random points, restarting
// them, for a few seconds. Each worker journals (with fsync) what it holds
// after each allocation and before each release. Afterwards the state must
// be consistent before any repair, and after GC with the journaled owners as
// the valid set the store must hold exactly what the journals say: no
// address held twice, none leaked, none lost.
func TestCrashSafetyBolt(t *testing.T) {
	if id := os.Getenv(crashWorkerEnv); id != "" {
		crashWorker(t, id)
		return
	}
	if testing.Short() {
		t.Skip("crash test runs for several seconds")
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "ipam.db")
	const workers = 4
	duration := 6 * time.Second
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))

	procs := make([]*exec.Cmd, workers)
	incarnation := make([]int, workers)
	start := func(w int) {
		incarnation[w]++
		id := fmt.Sprintf("w%di%d", w, incarnation[w])
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafetyBolt$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			crashWorkerEnv+"="+id,
			crashDBEnv+"="+db,
			crashJournalEnv+"="+filepath.Join(dir, id+".journal"))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[w] = cmd
	}
	for w := range workers {
		start(w)
	}
	kills := 0
	deadline := time.Now().Add(duration)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
		w := rng.IntN(workers)
		procs[w].Process.Signal(syscall.SIGKILL)
		err := procs[w].Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("worker %d ended with %v before it was killed", w, err)
		}
		kills++
		start(w)
	}
	for _, p := range procs {
		p.Process.Signal(syscall.SIGKILL)
		p.Wait()
	}

	// What the journals say is held.
	valid := map[ipam.Owner][]netip.Addr{}
	journals, _ := filepath.Glob(filepath.Join(dir, "*.journal"))
	allocs, releases := 0, 0
	for _, j := range journals {
		held, a, r := readJournal(t, j)
		allocs += a
		releases += r
		for o, ads := range held {
			valid[o] = ads
		}
	}
	t.Logf("%d kills, %d processes, %d allocations and %d releases journaled, %d held at the end",
		kills, len(journals), allocs, releases, len(valid))
	if allocs < 100 || kills < 10 {
		t.Fatalf("too little happened to prove anything: %d allocations, %d kills", allocs, kills)
	}

	// The file is a sound bbolt database.
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	bdb.Close()
	if err != nil {
		t.Fatalf("bbolt consistency check: %v", err)
	}

	ctx := context.Background()
	store, err := ipam.OpenBolt(db, ipam.BoltConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	a, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: store, Ranges: crashRanges()})
	if err != nil {
		t.Fatal(err)
	}
	// Every transaction is atomic: the state is consistent before repair.
	if err := a.Check(ctx); err != nil {
		t.Fatalf("after the kills, before GC: %v", err)
	}
	var keep []ipam.Owner
	for o := range valid {
		keep = append(keep, o)
	}
	released, err := a.GC(ctx, keep)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("GC released %d allocations that no journal holds (committed but killed before the journal write, or killed while being released)", len(released))
	list, err := a.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[ipam.Owner][]netip.Addr{}
	seen := map[netip.Addr]ipam.Owner{}
	for _, al := range list {
		got[al.Owner] = addrs(al)
		for _, ad := range addrs(al) {
			if o, dup := seen[ad]; dup {
				t.Errorf("%v held by %v and %v", ad, o, al.Owner)
			}
			seen[ad] = al.Owner
		}
	}
	for o, ads := range valid {
		if !equalAddrs(got[o], ads) {
			t.Errorf("%v: journal says %v, store has %v (lost)", o, ads, got[o])
		}
	}
	for o, ads := range got {
		if _, ok := valid[o]; !ok {
			t.Errorf("%v holds %v after GC, but no journal has it (leaked)", o, ads)
		}
	}
	u, _ := a.Usage(ctx)
	if u[0].InUse != uint64(len(valid)) || u[1].InUse != uint64(len(valid)) {
		t.Errorf("usage %+v, want %d held per family", u, len(valid))
	}
	if err := a.Check(ctx); err != nil {
		t.Fatalf("after GC: %v", err)
	}
}

// crashWorker allocates and releases until it is killed.
func crashWorker(t *testing.T, id string) {
	jf, err := os.OpenFile(os.Getenv(crashJournalEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	journal := func(format string, args ...any) {
		if _, err := fmt.Fprintf(jf, format+"\n", args...); err != nil {
			t.Fatal(err)
		}
		if err := jf.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	store, err := ipam.OpenBolt(os.Getenv(crashDBEnv), ipam.BoltConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ipam.NewNodeAllocator(ipam.NodeConfig{Store: store, Ranges: crashRanges(), Cooldown: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	var held []ipam.Owner
	for seq := 0; ; seq++ {
		if len(held) < 20 && (len(held) == 0 || rng.IntN(10) < 6) {
			o := ipam.Owner{ContainerID: fmt.Sprintf("%s-%d", id, seq), IfName: "eth0"}
			al, err := a.Allocate(ctx, o)
			if errors.Is(err, ipam.ErrExhausted) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, ad := range addrs(al) {
				s = append(s, ad.String())
			}
			journal("H %s %s", o, strings.Join(s, ","))
			held = append(held, o)
			continue
		}
		i := rng.IntN(len(held))
		o := held[i]
		journal("D %s", o)
		if _, _, err := a.Release(ctx, o); err != nil {
			t.Fatal(err)
		}
		journal("R %s", o)
		held = append(held[:i], held[i+1:]...)
	}
}

// readJournal returns what a worker's journal says it holds, ignoring a
// torn last line, and how many allocations and releases it records.
func readJournal(t *testing.T, path string) (map[ipam.Owner][]netip.Addr, int, int) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	held := map[ipam.Owner][]netip.Addr{}
	allocs, releases := 0, 0
	lines := strings.Split(string(b), "\n")
	// The last element is empty, or a line torn by the kill: drop it.
	for _, line := range lines[:len(lines)-1] {
		f := strings.Fields(line)
		if len(f) < 2 {
			t.Fatalf("%s: bad line %q", path, line)
		}
		o, err := ipam.ParseOwner(f[1])
		if err != nil {
			t.Fatal(err)
		}
		switch f[0] {
		case "H":
			var ads []netip.Addr
			for _, s := range strings.Split(f[2], ",") {
				ads = append(ads, netip.MustParseAddr(s))
			}
			held[o] = ads
			allocs++
		case "D":
			delete(held, o) // being released: not valid, whatever the store says
		case "R":
			releases++
		}
	}
	return held, allocs, releases
}
