package ipam

import "errors"

// Errors a caller may need to branch on. Lookups of things that do not exist
// return errors wrapping os.ErrNotExist.
var (
	// ErrExhausted means every address (or node CIDR, or block) the
	// allocator may hand out is held.
	ErrExhausted = errors.New("exhausted")
	// ErrInUse means a specific address or CIDR that was asked for is held
	// by another owner.
	ErrInUse = errors.New("in use")
)
