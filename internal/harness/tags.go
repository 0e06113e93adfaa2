package harness

// Tag lists: names to seed a registry with, and the check that a client saw each tag once.

import (
	"fmt"
	"slices"
	"testing"
)

// TagNames are n sortable tags, 1.000, 1.001, ...
func TagNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("1.%03d", i)
	}
	return out
}

// ExpectEachTagOnce checks that got holds every tag of want (sorted) exactly once, in any
// order: no duplicates, no gaps.
func ExpectEachTagOnce(t testing.TB, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d tags, want %d", len(got), len(want))
	}
	g := slices.Sorted(slices.Values(got))
	for i := range want {
		if g[i] != want[i] {
			t.Fatalf("tag %d: %q, want %q (duplicates or gaps)", i, g[i], want[i])
		}
	}
}
