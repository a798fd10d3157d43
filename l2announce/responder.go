package l2announce

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/packet"
)

// Pauses of a Responder's loops.
const (
	// portRetryDelay: before opening the connections of an interface
	// again after they failed to open.
	portRetryDelay = time.Second
	// campaignRetryMin and campaignRetryMax bound the pause before a
	// campaign that failed starts again; it doubles after each failure.
	campaignRetryMin = 100 * time.Millisecond
	campaignRetryMax = 5 * time.Second
	// readRetryMax bounds the pause after a failed read.
	readRetryMax = time.Second
	// conflictLogInterval: at most one conflict is logged per interface
	// in this interval.
	conflictLogInterval = time.Second
)

// maxFrameLen is the size of a reader's buffer: any frame fits.
const maxFrameLen = 1 << 16

// A Responder answers ARP requests and neighbour solicitations for the VIPs
// this node holds, on the interfaces its [Config] selects. Create it with
// [New], give it VIPs with [Responder.SetVIPs], and run it with
// [Responder.Run].
type Responder struct {
	cfg      Config
	patterns []*regexp.Regexp
	log      *slog.Logger
	sys      system // nil: Run opens the namespace of cfg.NetNS.

	ran atomic.Bool

	vmu  sync.Mutex
	vips map[netip.Addr]struct{}
	wake chan struct{} // Tells Run that the VIPs changed.

	// The answering state: written by Run and the campaigns, read by the
	// readers of every interface.
	mu      sync.RWMutex
	leases  map[Key]*lease
	ports   map[int]*port // By interface index.
	stopped bool          // Run is ending: no answers any more.

	// Set by Run before it starts anything that uses them.
	runCtx context.Context
	wg     sync.WaitGroup

	stats stats
}

// lease is what a campaign has told the Responder about one Key.
type lease struct {
	until   time.Time // The node answers while the time is before until.
	revoked bool      // The campaign is ending: no answers any more.
}

// campaign is one Key's campaign, owned by Run.
type campaign struct {
	key      Key
	lease    *lease
	cancel   context.CancelFunc
	stopping bool
}

// port is one interface announced on, with its connections.
type port struct {
	link     linkInfo
	segment  string
	arp, ndp net.PacketConn
	limiter  *limiter
	closed   atomic.Bool

	lastConflictLog atomic.Int64 // Unix nanoseconds.
}

// runState is the state Run's loop owns.
type runState struct {
	sys       system
	links     map[int]linkInfo
	campaigns map[Key]*campaign
	ended     chan *campaign
}

// New returns a Responder for cfg, or an error naming an invalid field. It
// opens nothing: [Responder.Run] does.
func New(cfg Config) (*Responder, error) {
	return newResponder(cfg, nil)
}

// newResponder returns a Responder that finds its interfaces and opens its
// connections through sys (nil: in cfg.NetNS).
func newResponder(cfg Config, sys system) (*Responder, error) {
	cfg, patterns, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Responder{
		cfg:      cfg,
		patterns: patterns,
		log:      cfg.Logger,
		sys:      sys,
		vips:     make(map[netip.Addr]struct{}),
		wake:     make(chan struct{}, 1),
		leases:   make(map[Key]*lease),
		ports:    make(map[int]*port),
	}, nil
}

// SetVIPs replaces the VIPs the Responder announces; it may be called before
// or while Run runs. IPv4-mapped IPv6 addresses are taken as IPv4. It
// returns an error, and changes nothing, if an address is not unicast, is
// unspecified, loopback or has a zone.
//
// Calling SetVIPs also applies [Config.Eligible] again to every VIP, so a
// caller whose policy changed calls it with the same VIPs.
func (r *Responder) SetVIPs(vips []netip.Addr) error {
	set := make(map[netip.Addr]struct{}, len(vips))
	for _, v := range vips {
		a, err := checkVIP(v)
		if err != nil {
			return fmt.Errorf("set VIPs: %w", err)
		}
		set[a] = struct{}{}
	}
	r.vmu.Lock()
	r.vips = set
	r.vmu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run announces until ctx is done, then returns ctx's error. It follows the
// interfaces of [Config.NetNS], opens connections on the selected ones that
// are up, campaigns through the Elector for every VIP and segment this
// node is eligible for, and answers for the Keys it holds.
//
// When ctx is done, the Responder stops answering at once, before anything
// else; then it closes its connections and ends its campaigns, which
// release their leases, and returns when all of that is done. Run may be
// called once; errors before it starts (the namespace cannot be opened) are
// returned at once.
func (r *Responder) Run(ctx context.Context) error {
	if !r.ran.CompareAndSwap(false, true) {
		return errors.New("run responder: it already ran")
	}
	sys := r.sys
	if sys == nil {
		s, err := openSystem(r.cfg.NetNS, r.cfg.Listen, r.log)
		if err != nil {
			return fmt.Errorf("run responder: %w", err)
		}
		sys = s
	}
	defer sys.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.runCtx = ctx

	snapshots := make(chan map[int]linkInfo, 1)
	r.wg.Go(func() { sys.watchLinks(ctx, snapshots) })
	if r.cfg.RefreshInterval > 0 {
		r.wg.Go(func() { r.refresh(ctx) })
	}

	st := &runState{sys: sys, campaigns: make(map[Key]*campaign), ended: make(chan *campaign)}
	retry := time.NewTimer(0)
	<-retry.C
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			r.shutdown(st)
			r.wg.Wait()
			return ctx.Err()
		case st.links = <-snapshots:
		case <-r.wake:
		case c := <-st.ended:
			delete(st.campaigns, c.key)
			r.mu.Lock()
			if r.leases[c.key] == c.lease {
				delete(r.leases, c.key)
			}
			r.mu.Unlock()
		case <-retry.C:
		}
		if ctx.Err() == nil && r.reconcile(ctx, st) {
			retry.Reset(portRetryDelay)
		}
	}
}

// reconcile opens and closes connections and starts and stops campaigns to
// match the interfaces and VIPs. It reports whether an interface failed to
// open and should be tried again.
func (r *Responder) reconcile(ctx context.Context, st *runState) (retry bool) {
	want := make(map[int]linkInfo)
	for idx, l := range st.links {
		if l.Up && l.Ethernet && r.selected(l.Name) {
			want[idx] = l
		}
	}
	for idx, p := range r.ports {
		l, ok := want[idx]
		if !ok || l.Name != p.link.Name || !bytes.Equal(l.MAC, p.link.MAC) || r.cfg.Segment(l.Name) != p.segment {
			r.closePort(p)
		}
	}
	var opened []*port
	for idx, l := range want {
		if _, ok := r.ports[idx]; ok {
			continue
		}
		p, err := r.openPort(st.sys, l)
		if err != nil {
			r.log.Error("cannot announce on interface", "interface", l.Name, "error", err)
			retry = true
			continue
		}
		opened = append(opened, p)
	}

	segments := make(map[string]bool)
	for _, p := range r.ports {
		segments[p.segment] = true
	}
	r.vmu.Lock()
	wantKeys := make(map[Key]bool)
	for vip := range r.vips {
		for s := range segments {
			if k := (Key{VIP: vip, Segment: s}); r.cfg.Eligible(k) {
				wantKeys[k] = true
			}
		}
	}
	r.vmu.Unlock()

	for k, c := range st.campaigns {
		if !wantKeys[k] && !c.stopping {
			r.stopCampaign(c)
		}
	}
	started := make(map[Key]bool)
	for k := range wantKeys {
		if _, ok := st.campaigns[k]; !ok {
			r.startCampaign(ctx, st, k)
			started[k] = true
		}
	}
	// An interface that comes up in a segment whose VIPs the node holds
	// announces them at once. (A campaign started just now announces on
	// every interface when it takes its Key.)
	for _, p := range opened {
		for k := range wantKeys {
			if k.Segment == p.segment && !started[k] && r.answering(k) {
				r.announce(k, p)
			}
		}
	}
	return retry
}

// selected reports whether the interface called name matches the
// configuration's patterns.
func (r *Responder) selected(name string) bool {
	if len(r.patterns) == 0 {
		return true
	}
	for _, re := range r.patterns {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

// openPort opens the connections of the interface l and starts reading them.
func (r *Responder) openPort(sys system, l linkInfo) (*port, error) {
	ifi := l.netInterface()
	arpConn, err := sys.listen(ifi, etherTypeARP)
	if err != nil {
		return nil, fmt.Errorf("open ARP connection: %w", err)
	}
	ndpConn, err := sys.listen(ifi, etherTypeIPv6)
	if err != nil {
		arpConn.Close()
		return nil, fmt.Errorf("open NDP connection: %w", err)
	}
	p := &port{
		link:    l,
		segment: r.cfg.Segment(l.Name),
		arp:     arpConn,
		ndp:     ndpConn,
		limiter: newLimiter(r.cfg.MaxReplyRate),
	}
	r.mu.Lock()
	r.ports[l.Index] = p
	r.mu.Unlock()
	r.wg.Go(func() { r.serve(p, p.arp) })
	r.wg.Go(func() { r.serve(p, p.ndp) })
	r.log.Info("announcing on interface", "interface", l.Name, "segment", p.segment, "mac", l.MAC.String())
	return p, nil
}

// closePort stops answering on p's interface and closes its connections.
func (r *Responder) closePort(p *port) {
	r.mu.Lock()
	if r.ports[p.link.Index] == p {
		delete(r.ports, p.link.Index)
	}
	r.mu.Unlock()
	p.closed.Store(true)
	p.arp.Close()
	p.ndp.Close()
	r.log.Info("stopped announcing on interface", "interface", p.link.Name)
}

// startCampaign starts the campaign for k.
func (r *Responder) startCampaign(ctx context.Context, st *runState, k Key) {
	l := &lease{}
	r.mu.Lock()
	r.leases[k] = l
	r.mu.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	c := &campaign{key: k, lease: l, cancel: cancel}
	st.campaigns[k] = c
	r.wg.Go(func() {
		r.campaign(cctx, c)
		st.ended <- c // Run receives until every campaign has ended.
	})
}

// stopCampaign stops answering for c's Key at once, then ends the campaign,
// which releases the lease.
func (r *Responder) stopCampaign(c *campaign) {
	r.mu.Lock()
	c.lease.revoked = true
	c.lease.until = time.Time{}
	r.mu.Unlock()
	c.stopping = true
	c.cancel()
}

// campaign runs the Elector's campaign for c until ctx is done, starting it
// again after a pause when it fails.
func (r *Responder) campaign(ctx context.Context, c *campaign) {
	hold := func(until time.Time) { r.hold(c, until) }
	pause := campaignRetryMin
	for {
		err := r.cfg.Elector.Campaign(ctx, c.key, hold)
		r.hold(c, time.Time{})
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("campaign failed", "key", c.key.String(), "error", err, "retry", pause)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, campaignRetryMax)
	}
}

// hold records what c's Elector said: this node may answer for c's Key until
// until (zero: not at all). A takeover is announced.
func (r *Responder) hold(c *campaign, until time.Time) {
	now := time.Now()
	r.mu.Lock()
	l := c.lease
	if !until.IsZero() && (l.revoked || r.stopped) {
		r.mu.Unlock()
		return
	}
	was := now.Before(l.until)
	l.until = until
	is := now.Before(until)
	r.mu.Unlock()

	switch {
	case is && !was:
		r.log.Info("answering for VIP", "key", c.key.String())
		r.announce(c.key, nil)
	case was && !is:
		r.log.Info("stopped answering for VIP", "key", c.key.String())
	}
}

// answering reports whether this node answers for k now.
func (r *Responder) answering(k Key) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.stopped {
		return false
	}
	l := r.leases[k]
	return l != nil && !l.revoked && time.Now().Before(l.until)
}

// announce sends Config.GratuitousCount announcements of k, on p or, with p
// nil, on every interface of k's segment, for as long as the node holds k.
func (r *Responder) announce(k Key, p *port) {
	if r.cfg.GratuitousCount == 0 {
		return
	}
	r.wg.Go(func() {
		for i := range r.cfg.GratuitousCount {
			if i > 0 {
				select {
				case <-r.runCtx.Done():
					return
				case <-time.After(r.cfg.GratuitousInterval):
				}
			}
			if !r.answering(k) {
				return
			}
			r.announceOnce(k, p)
		}
	})
}

// announceOnce sends one announcement of k on p or, with p nil, on every
// interface of k's segment.
func (r *Responder) announceOnce(k Key, only *port) {
	var ports []*port
	r.mu.RLock()
	if only != nil {
		ports = append(ports, only)
	} else {
		for _, p := range r.ports {
			if p.segment == k.Segment {
				ports = append(ports, p)
			}
		}
	}
	r.mu.RUnlock()

	for _, p := range ports {
		frames, dst, err := announcement(p.link.MAC, k.VIP)
		if err != nil {
			r.log.Error("cannot build announcement", "key", k.String(), "interface", p.link.Name, "error", err)
			continue
		}
		conn := p.arp
		if k.VIP.Is6() {
			conn = p.ndp
		}
		for _, f := range frames {
			if !r.answering(k) {
				return
			}
			if _, err := conn.WriteTo(f, &packet.Addr{HardwareAddr: dst}); err != nil {
				if !p.closed.Load() {
					r.log.Warn("cannot send announcement", "key", k.String(), "interface", p.link.Name, "error", err)
				}
				break
			}
			r.stats.announcements.Add(1)
		}
	}
}

// refresh announces every held Key every Config.RefreshInterval until ctx is
// done.
func (r *Responder) refresh(ctx context.Context) {
	t := time.NewTicker(r.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var held []Key
		now := time.Now()
		r.mu.RLock()
		for k, l := range r.leases {
			if !l.revoked && now.Before(l.until) {
				held = append(held, k)
			}
		}
		r.mu.RUnlock()
		for _, k := range held {
			r.announceOnce(k, nil)
		}
	}
}

// serve reads frames from conn, one of p's connections, and answers them,
// until p is closed. No frame and no read error stops it.
func (r *Responder) serve(p *port, conn net.PacketConn) {
	buf := make([]byte, maxFrameLen)
	failures := 0
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			if p.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// ENETDOWN when the link went down, and whatever else may
			// pass: the link's state decides when to stop, not reads.
			failures++
			pause := min(time.Duration(failures)*10*time.Millisecond, readRetryMax)
			r.log.Debug("read failed", "interface", p.link.Name, "error", err, "retry", pause)
			time.Sleep(pause)
			continue
		}
		failures = 0
		r.handle(p, conn, buf[:n])
	}
}

// handle answers frame, received on conn of p, if it asks for a held VIP.
func (r *Responder) handle(p *port, conn net.PacketConn, frame []byte) {
	res := handleFrame(frame, p.link.MAC, func(a netip.Addr) bool {
		return r.answering(Key{VIP: a, Segment: p.segment})
	})
	switch res.verdict {
	case verdictIgnored:
		r.stats.ignored.Add(1)
		return
	case verdictMalformed:
		r.stats.malformed.Add(1)
		return
	case verdictConflict:
		if r.ownMAC(res.requester) {
			// Another interface of this node on the same segment.
			r.stats.ignored.Add(1)
			return
		}
		r.stats.conflicts.Add(1)
		now := time.Now().UnixNano()
		if last := p.lastConflictLog.Load(); now-last >= int64(conflictLogInterval) && p.lastConflictLog.CompareAndSwap(last, now) {
			r.log.Warn("another station claims a VIP this node holds",
				"vip", res.vip, "interface", p.link.Name, "station", res.requester.String())
		}
		return
	}
	if !p.limiter.allow(time.Now(), res.requester) {
		r.stats.rateLimited.Add(1)
		return
	}
	// The lease may have ended while the reply was built.
	if !r.answering(Key{VIP: res.vip, Segment: p.segment}) {
		return
	}
	if _, err := conn.WriteTo(res.reply, &packet.Addr{HardwareAddr: res.dst}); err != nil {
		if !p.closed.Load() {
			r.log.Debug("cannot send reply", "interface", p.link.Name, "error", err)
		}
		return
	}
	r.stats.replies.Add(1)
}

// ownMAC reports whether mac is the address of one of the interfaces the
// Responder announces on.
func (r *Responder) ownMAC(mac net.HardwareAddr) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, p := range r.ports {
		if bytes.Equal(p.link.MAC, mac) {
			return true
		}
	}
	return false
}

// shutdown stops answering at once, closes every connection and ends every
// campaign, waiting for them to release their leases.
func (r *Responder) shutdown(st *runState) {
	r.mu.Lock()
	r.stopped = true
	for _, l := range r.leases {
		l.revoked = true
		l.until = time.Time{}
	}
	ports := r.ports
	r.ports = make(map[int]*port)
	r.mu.Unlock()

	for _, p := range ports {
		p.closed.Store(true)
		p.arp.Close()
		p.ndp.Close()
	}
	for _, c := range st.campaigns {
		c.cancel()
	}
	for len(st.campaigns) > 0 {
		c := <-st.ended
		delete(st.campaigns, c.key)
	}
	r.mu.Lock()
	clear(r.leases)
	r.mu.Unlock()
	r.log.Info("responder stopped")
}

// KeyStatus is the state of one [Key] this node campaigns for.
type KeyStatus struct {
	Key Key
	// Held reports whether this node answers for Key now.
	Held bool
	// Until is when the node stops answering unless its Elector extends
	// the lease; zero when not held.
	Until time.Time
	// Interfaces are the interfaces of Key.Segment the node answers on.
	Interfaces []string
}

// Status returns the Keys this node campaigns for, ordered by segment and
// VIP.
func (r *Responder) Status() []KeyStatus {
	now := time.Now()
	r.mu.RLock()
	var out []KeyStatus
	for k, l := range r.leases {
		s := KeyStatus{Key: k}
		if !r.stopped && !l.revoked && now.Before(l.until) {
			s.Held, s.Until = true, l.until
		}
		for _, p := range r.ports {
			if p.segment == k.Segment {
				s.Interfaces = append(s.Interfaces, p.link.Name)
			}
		}
		slices.Sort(s.Interfaces)
		out = append(out, s)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b KeyStatus) int {
		return cmp.Or(cmp.Compare(a.Key.Segment, b.Key.Segment), a.Key.VIP.Compare(b.Key.VIP))
	})
	return out
}
