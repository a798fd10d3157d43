// Package etcdelect is an [l2announce.Elector] on etcd: for every Key (a VIP
// on a segment) at most one node holds the lease and answers, the others
// watch it and take over when it is released or stops being renewed. It
// lives apart from package l2announce so that programs that use the local
// elector do not pull in the etcd client and gRPC.
//
// # Leases in etcd
//
// Each campaign (one node, one Key) has an etcd lease of LeaseDuration
// (rounded up to whole seconds; etcd may grant more) and two keys under
// [Config.Prefix], both attached to that lease:
//
//	<segment>/<vip>/candidates/<name>   the node campaigns for the Key
//	<segment>/<vip>/holder              the holder's name
//
// The client keeps a candidate's lease alive in the background, and the
// candidate watches the Key's keys. When the node stops, or dies and its
// lease expires, etcd deletes both keys in one revision.
//
// # Acquiring and renewing
//
// A candidate acquires with a compare-and-swap: a transaction that writes
// its name into the holder key with its lease if the key's modification
// revision is still the one the candidate saw last (0 for a missing key).
// It tries when the holder key is deleted (released, or expired with a dead
// holder's lease), and when it has seen no write of the holder key for
// LeaseDuration (a holder that stopped renewing, before etcd notices the
// lease expired). If anyone wrote the key meanwhile, the swap fails.
//
// A holder renews every RetryPeriod: it renews its etcd lease
// (KeepAliveOnce), then rewrites the holder key with a transaction that
// compares the key's modification revision with its own last write. When
// both succeed, it may answer until RenewDeadline after the moment the
// renewal started. When a renewal fails it tries again; it stops answering
// when the deadline passes (the Responder checks the deadline against the
// clock before every answer, so a stalled elector stops in time too). When
// the comparison fails, or the watch shows another write or the deletion of
// the holder key, it stops answering at once and is a candidate again.
//
// # Failover timing
//
// Let t be the start of a holder's last successful renewal. It answers only
// before t + RenewDeadline. Its rewrite of the holder key commits after t,
// and a candidate sees it later still; the candidate waits LeaseDuration
// after seeing it, so it cannot acquire before t + LeaseDuration. etcd
// received the lease renewal after t too, so it cannot expire the lease, and
// delete the key, before t + LeaseDuration either. Between the old holder's
// last possible answer and the new holder's first there are therefore at
// least LeaseDuration - RenewDeadline (2s at the defaults, 500ms at
// 1s / 500ms): with RenewDeadline < LeaseDuration, no two nodes answer at
// once. This assumes that the clocks of the nodes and of etcd advance at
// rates that differ by less than (LeaseDuration - RenewDeadline) /
// LeaseDuration (a third at the defaults; real clocks differ by parts per
// million), and that no answer spends longer than that margin on the wire.
// Durations are measured on the monotonic clock, so steps of the wall clock
// do not matter.
//
// A holder that crashes, or is partitioned from etcd, is replaced
// LeaseDuration after its last renewal, so between LeaseDuration -
// RetryPeriod and LeaseDuration after the failure, plus a watch event and
// two round trips to etcd; the new holder then announces the VIP. One that
// leaves in order revokes its lease, and the next candidate acquires within
// milliseconds. If etcd itself is down or unreachable, the holder stops
// answering within RenewDeadline of its last renewal and nobody can acquire:
// the VIP is unreachable until etcd is back, which is the price of never
// having two answerers.
//
// Failover times measured on the namespace test bed of this package (two
// node processes on a bridge, the client probing every 5ms, the leader
// killed with SIGKILL at a random moment between two renewals, 20 runs; see
// BenchmarkFailover): at 1s / 500ms / 200ms, median 915ms and worst 993ms;
// at 3s / 1s / 200ms, median 2.90s and worst 3.00s. A leader killed just
// after a renewal is replaced after LeaseDuration plus about 10ms. After
// SIGTERM (a graceful release), median 3ms and worst 7ms.
//
// # Spreading VIPs
//
// Candidates are ranked per Key by rendezvous hashing: each node's score for
// a Key is a hash of the segment, the VIP and the node's name, which every
// node computes alike ([Preferred] shows the order). A candidate of rank r
// (r candidates score higher) waits r × RankDelay before it tries to
// acquire a free Key, or to take over one whose holder stopped renewing (that
// holder does not count in the ranking). When all candidates compete at once
// (a new VIP, or the holder failed), the best-ranked one acquires, so VIPs
// spread evenly over the eligible nodes and a failed node's VIPs spread over
// the survivors rather than all moving to one. A candidate that starts while
// its Key is free waits RankDelay before its first attempt, so that nodes
// starting together see each other. There is no preemption: a VIP stays with
// its holder when a better-ranked node appears later, since moving it would
// disturb its traffic. Ranking only decides who acquires; the
// compare-and-swap alone keeps the holder unique.
//
// # Cost
//
// Per held Key, a lease renewal and a one-key transaction every RetryPeriod
// (5 writes a second at the defaults); per campaign, a lease kept alive by
// the client's keep-alive stream and a watch. Electors share nothing but the
// client, which may serve many of them.
//
// # Errors and lifetime
//
// [New] returns an error naming an invalid field: the timing must satisfy
// 0 < RetryPeriod < RenewDeadline < LeaseDuration. [Elector.Campaign]
// returns only when its context is done, with the context's error, after it
// stopped answering and revoked its lease; errors from etcd are logged to
// [Config.Logger] and retried after RetryPeriod, never past the renew
// deadline. Every node needs a distinct [Config.Name]. The client belongs to
// the caller, who closes it after the campaigns end.
package etcdelect
