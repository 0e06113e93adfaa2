//go:build !race

package harness

// Race: the race detector slows every request about fourfold; the longest tests scale
// their counts down under it.
const Race = false
