package ipam

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Usage is one row of a usage report: how many addresses a pool, a block or
// a node CIDR has and how many of them are held.
type Usage struct {
	// Grouping says what the row is: "IP Pool", "Block", "Node CIDR",
	// "LB Pool".
	Grouping string
	// CIDR is the row's prefix, or "start-stop" for a range.
	CIDR string
	// Node is the node a block or node CIDR is affine to, if any.
	Node string
	// Total is the number of addresses that can be handed out (saturated at
	// 2^64-1 for huge IPv6 ranges); InUse the number held.
	Total, InUse uint64
}

// Free returns Total - InUse.
func (u Usage) Free() uint64 {
	if u.InUse > u.Total {
		return 0
	}
	return u.Total - u.InUse
}

// WriteUsage writes rows as a table in the shape of
// `calicoctl ipam show --show-blocks`:
//
//	+----------+----------------+-----------+------------+--------------+
//	| GROUPING |      CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |
//	+----------+----------------+-----------+------------+--------------+
//	| IP Pool  | 10.244.0.0/16  |     65536 | 5 (0%)     | 65531 (100%) |
//	| Block    | 10.244.0.0/26  |        64 | 5 (8%)     | 59 (92%)     |
//	+----------+----------------+-----------+------------+--------------+
func WriteUsage(w io.Writer, rows []Usage) error {
	header := []string{"GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"}
	cells := make([][]string, len(rows))
	for i, r := range rows {
		cells[i] = []string{
			r.Grouping, r.CIDR, strconv.FormatUint(r.Total, 10),
			withPercent(r.InUse, r.Total), withPercent(r.Free(), r.Total),
		}
	}
	width := make([]int, len(header))
	for c, h := range header {
		width[c] = len(h)
		for _, row := range cells {
			width[c] = max(width[c], len(row[c]))
		}
	}
	var b strings.Builder
	rule := func() {
		for _, wd := range width {
			b.WriteString("+" + strings.Repeat("-", wd+2))
		}
		b.WriteString("+\n")
	}
	rule()
	for c, h := range header {
		pad := width[c] - len(h)
		fmt.Fprintf(&b, "| %s%s%s ", strings.Repeat(" ", pad/2), h, strings.Repeat(" ", pad-pad/2))
	}
	b.WriteString("|\n")
	rule()
	for _, row := range cells {
		for c, cell := range row {
			if c == 2 {
				fmt.Fprintf(&b, "| %*s ", width[c], cell)
			} else {
				fmt.Fprintf(&b, "| %-*s ", width[c], cell)
			}
		}
		b.WriteString("|\n")
	}
	rule()
	_, err := io.WriteString(w, b.String())
	return err
}

func withPercent(n, total uint64) string {
	if total == 0 {
		return fmt.Sprintf("%d (0%%)", n)
	}
	return fmt.Sprintf("%d (%.0f%%)", n, math.Round(100*float64(n)/float64(total)))
}
