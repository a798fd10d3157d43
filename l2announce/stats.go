package l2announce

import "sync/atomic"

// Stats counts what a [Responder] did with the frames it received and sent.
type Stats struct {
	// Replies is the number of ARP replies and neighbour advertisements
	// sent in answer to requests for held VIPs.
	Replies uint64
	// Announcements is the number of gratuitous ARP and unsolicited
	// neighbour advertisement frames sent.
	Announcements uint64
	// Ignored is the number of well-formed frames that asked nothing of
	// this node: requests for VIPs it does not hold (or for other
	// addresses), other operations, its own frames.
	Ignored uint64
	// Malformed is the number of frames that failed to parse or to
	// validate: wrong lengths, bad checksums, fields no valid request
	// carries. They get no reply.
	Malformed uint64
	// RateLimited is the number of requests left unanswered because their
	// requester exceeded Config.MaxReplyRate.
	RateLimited uint64
	// Conflicts is the number of frames in which another station claimed a
	// VIP this node held: a sign of a misconfigured host, or of an Elector
	// that let two nodes hold one Key.
	Conflicts uint64
}

// stats is the live form of [Stats].
type stats struct {
	replies, announcements, ignored, malformed, rateLimited, conflicts atomic.Uint64
}

// Stats returns the Responder's counters.
func (r *Responder) Stats() Stats {
	return Stats{
		Replies:       r.stats.replies.Load(),
		Announcements: r.stats.announcements.Load(),
		Ignored:       r.stats.ignored.Load(),
		Malformed:     r.stats.malformed.Load(),
		RateLimited:   r.stats.rateLimited.Load(),
		Conflicts:     r.stats.conflicts.Load(),
	}
}
